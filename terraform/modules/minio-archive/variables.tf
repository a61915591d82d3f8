variable "bucket_name" {
  description = "Name of the archive bucket. Object locking is enabled when the bucket is created."
  type        = string
}

variable "default_retention_days" {
  description = "Default COMPLIANCE retention, in days, for objects written without their own retain-until (wormvault sets one on every object). At least the daemon's [upload] min_default_retention_days."
  type        = number
  default     = 2192

  validation {
    condition     = var.default_retention_days >= 1 && floor(var.default_retention_days) == var.default_retention_days
    error_message = "default_retention_days must be a whole number of days, at least 1."
  }
}

variable "kms_key_id" {
  description = "MinIO KES key that encrypts the bucket (SSE-KMS). The module creates it unless create_kms_key is false."
  type        = string
  default     = "wormvault-archive"
}

variable "create_kms_key" {
  description = "Create kms_key_id in MinIO's KMS (needs KES configured on the server)."
  type        = bool
  default     = true
}

variable "prefix" {
  description = "The daemon's [store] prefix, if any (e.g. \"prod/\")."
  type        = string
  default     = ""
}

variable "daemon_user" {
  description = "Name of the MinIO user that owns the daemon's service account."
  type        = string
  default     = "wormvault-daemon"
}

variable "reader_user" {
  description = "Name of the read-only MinIO user for `verify --no-report` and retrieval."
  type        = string
  default     = "wormvault-reader"
}
