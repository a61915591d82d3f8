variable "name" {
  description = "Name prefix of the roles, e.g. \"wormvault-prod\"."
  type        = string
}

variable "bucket_arn" {
  description = "The archive bucket (modules/aws-archive output bucket_arn)."
  type        = string
}

variable "kms_key_arn" {
  description = "The archive's KMS key (modules/aws-archive output kms_key_arn)."
  type        = string
}

variable "prefix" {
  description = "The daemon's [store] prefix, if any (e.g. \"prod/\"). Rights are limited to keys under it."
  type        = string
  default     = ""
}

variable "anchor_mirror" {
  description = "The anchors mirror bucket and its key, when [anchor.mirror] is an S3 bucket. The daemon writes each day's anchor there too."
  type = object({
    bucket_arn  = string
    kms_key_arn = string
  })
  default = null
}

variable "legal_hold" {
  description = "Grant s3:PutObjectLegalHold, for firms that place legal holds through wormvault. Off by default."
  type        = bool
  default     = false
}

variable "daemon_trusted_principals" {
  description = "Who may assume the daemon role: AWS principal ARNs (an instance role, a CI role) ..."
  type        = list(string)
  default     = []
}

variable "daemon_trusted_services" {
  description = "... and AWS services (the default lets EC2 instances use the role through the instance profile)."
  type        = list(string)
  default     = ["ec2.amazonaws.com"]
}

variable "reader_trusted_principals" {
  description = "Who may assume the read-only role used for `wormvault verify --no-report`, `rti query` and examinations."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags for everything the module creates."
  type        = map(string)
  default     = {}
}
