output "wormvault_store_config" {
  description = "The daemon's [store], [upload] and [anchor.mirror] settings."
  value       = <<-EOT
    ${module.archive.wormvault_store_config}
    [anchor.mirror]
    kind = "s3"

    [anchor.mirror.s3]
    bucket = "${module.anchors_mirror.bucket}"
    region = "${module.anchors_mirror.region}"
  EOT
}

output "daemon_instance_profile" {
  description = "Attach to the daemon's EC2 instances."
  value       = module.identities.daemon_instance_profile
}

output "daemon_role_arn" {
  description = "The daemon's role."
  value       = module.identities.daemon_role_arn
}

output "reader_role_arn" {
  description = "The read-only role for verify --no-report and retrieval."
  value       = module.identities.reader_role_arn
}

output "replica_bucket" {
  description = "The replica (same objects, same locks, another region)."
  value       = module.replica.bucket
}
