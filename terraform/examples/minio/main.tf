# wormvault on MinIO. Credentials for the provider come from MINIO_USER / MINIO_PASSWORD.
#
#   terraform init && terraform apply -var minio_server=minio.internal.example:9000
#   terraform output -raw wormvault_store_config >> /etc/wormvault/wormvault.toml
#   terraform output -raw daemon_secret_key   # into the daemon's environment, not its config

terraform {
  required_version = ">= 1.5"
  required_providers {
    minio = {
      source  = "aminueza/minio"
      version = ">= 3.3, < 4.0"
    }
  }
}

provider "minio" {
  minio_server = var.minio_server
  minio_ssl    = true
}

module "archive" {
  source = "../../modules/minio-archive"

  bucket_name            = var.bucket_name
  default_retention_days = var.default_retention_days
  create_kms_key         = var.create_kms_key
}
