-- MLflow's backend store beside Airflow's metadata database (POSTGRES_DB), owned by the same user.
CREATE DATABASE mlflow OWNER recsys;
