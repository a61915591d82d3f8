# A complete AWS deployment: the archive in the primary region, a locked replica in a second
# region, a locked mirror for the daily anchors, and the daemon's and reader's roles.
#
#   terraform init && terraform apply -var bucket_prefix=acme-bd
#   terraform output -raw wormvault_store_config >> /etc/wormvault/wormvault.toml

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.30, < 7.0"
    }
  }
}

provider "aws" {
  region = var.region
}

provider "aws" {
  alias  = "replica"
  region = var.replica_region
}

# The replica first: the primary's replication rule names it.
module "replica" {
  source    = "../../modules/aws-archive"
  providers = { aws = aws.replica }

  bucket_name                = "${var.bucket_prefix}-wormvault-replica"
  default_retention_days     = var.default_retention_days
  break_glass_principal_arns = var.break_glass_principal_arns
  tags                       = var.tags
}

module "archive" {
  source = "../../modules/aws-archive"

  bucket_name                = "${var.bucket_prefix}-wormvault-archive"
  default_retention_days     = var.default_retention_days
  break_glass_principal_arns = var.break_glass_principal_arns
  replicate_to = {
    bucket_arn  = module.replica.bucket_arn
    kms_key_arn = module.replica.kms_key_arn
  }
  tags = var.tags
}

# [anchor.mirror]: the signed daily roots, in another region and bucket.
module "anchors_mirror" {
  source    = "../../modules/aws-archive"
  providers = { aws = aws.replica }

  bucket_name                = "${var.bucket_prefix}-wormvault-anchors"
  default_retention_days     = var.default_retention_days
  break_glass_principal_arns = var.break_glass_principal_arns
  tags                       = var.tags
}

module "identities" {
  source = "../../modules/aws-daemon-iam"

  name        = "${var.bucket_prefix}-wormvault"
  bucket_arn  = module.archive.bucket_arn
  kms_key_arn = module.archive.kms_key_arn
  anchor_mirror = {
    bucket_arn  = module.anchors_mirror.bucket_arn
    kms_key_arn = module.anchors_mirror.kms_key_arn
  }
  reader_trusted_principals = var.reader_trusted_principals
  tags                      = var.tags
}
