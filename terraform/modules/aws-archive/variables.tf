variable "bucket_name" {
  description = "Name of the archive bucket. Object Lock can only be enabled when a bucket is created, so this module always creates it."
  type        = string
}

variable "default_retention_days" {
  description = "Default COMPLIANCE retention, in days, for objects written without their own retain-until. wormvault sets retain-until on every object by its 17a-4 class; this default is the floor for anything else. At least the daemon's [upload] min_default_retention_days."
  type        = number
  default     = 2192 # six years, leap days included

  validation {
    condition     = var.default_retention_days >= 1 && floor(var.default_retention_days) == var.default_retention_days
    error_message = "default_retention_days must be a whole number of days, at least 1."
  }
}

variable "break_glass_principal_arns" {
  description = "IAM principals exempt from the bucket policy's deny on deletion, governance bypass and lock-configuration changes. None by default: then nobody, Terraform included, can do those things through the bucket. COMPLIANCE-locked versions stay undeletable by anyone until their retain-until either way."
  type        = list(string)
  default     = []
}

variable "access_log_bucket" {
  description = "Existing bucket for S3 server access logs. When null the module creates one next to the archive."
  type        = string
  default     = null
}

variable "access_log_expiration_days" {
  description = "How long the access-log bucket created by this module keeps logs."
  type        = number
  default     = 2192
}

variable "kms_deletion_window_days" {
  description = "Waiting period before the archive's KMS key is deleted, if anyone with the break-glass role ever schedules that."
  type        = number
  default     = 30
}

variable "replicate_to" {
  description = "Replicate every new object version to this bucket (another region: 17a-4 redundancy). It must itself be an Object Lock bucket, e.g. a second instance of this module. Null: no replication."
  type = object({
    bucket_arn  = string
    kms_key_arn = string
  })
  default = null
}

variable "tags" {
  description = "Tags for everything the module creates."
  type        = map(string)
  default     = {}
}
