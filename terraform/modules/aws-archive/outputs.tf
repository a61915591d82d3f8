output "bucket" {
  description = "The archive bucket's name: [store.s3] bucket in the daemon's config."
  value       = aws_s3_bucket.archive.id
}

output "bucket_arn" {
  description = "The archive bucket's ARN, for modules/aws-daemon-iam."
  value       = aws_s3_bucket.archive.arn
}

output "region" {
  description = "The bucket's region: [store.s3] region."
  value       = aws_s3_bucket.archive.region
}

output "kms_key_arn" {
  description = "The key that encrypts the archive, for modules/aws-daemon-iam and for replication."
  value       = aws_kms_key.archive.arn
}

output "default_retention_days" {
  description = "The bucket's default COMPLIANCE retention: the daemon's [upload] min_default_retention_days must not exceed it."
  value       = var.default_retention_days
}

output "access_log_bucket" {
  description = "Where the archive's S3 server access logs go."
  value       = local.access_log_bucket
}

output "wormvault_store_config" {
  description = "The [store] section for the daemon's config file."
  value       = <<-EOT
    [store]
    kind = "s3"

    [store.s3]
    bucket = "${aws_s3_bucket.archive.id}"
    region = "${aws_s3_bucket.archive.region}"

    [upload]
    min_default_retention_days = ${var.default_retention_days}
  EOT
}
