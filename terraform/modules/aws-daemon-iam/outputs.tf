output "daemon_role_arn" {
  description = "The daemon's role: writes sealed objects, reads them back, never deletes."
  value       = aws_iam_role.daemon.arn
}

output "daemon_instance_profile" {
  description = "Instance profile for running the daemon on EC2."
  value       = aws_iam_instance_profile.daemon.name
}

output "reader_role_arn" {
  description = "The read-only role for sweeps (`verify --no-report`) and retrieval."
  value       = aws_iam_role.reader.arn
}
