terraform {
  required_version = ">= 1.5"
  required_providers {
    minio = {
      source  = "aminueza/minio"
      version = ">= 3.3, < 4.0"
    }
  }
}
