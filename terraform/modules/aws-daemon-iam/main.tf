# Least-privilege identities for wormvault (docs/DEPLOY.md, "Identity model"):
#
#   daemon  puts objects (with their COMPLIANCE retention, which needs s3:PutObjectRetention:
#           COMPLIANCE retention can only ever be extended), reads, heads and lists them, reads
#           retention, legal holds and the bucket's lock and versioning configuration (the
#           start-up `bucket check`), and uses the archive's KMS key. It has no delete, no
#           governance bypass, no configuration change. Legal holds only when enabled.
#   reader  reads and lists, and nothing else: `wormvault verify --no-report`, `rti query`.
#
# The `bucket check` canary proves the first property from the daemon's side: its attempt to
# delete a locked canary version must be refused.

locals {
  objects = "${var.bucket_arn}/${var.prefix}*"

  read_object_actions = [
    "s3:GetObject",
    "s3:GetObjectVersion",
    "s3:GetObjectAttributes",
    "s3:GetObjectVersionAttributes",
    "s3:GetObjectRetention",
    "s3:GetObjectLegalHold",
  ]
  read_bucket_actions = [
    "s3:ListBucket",
    "s3:ListBucketVersions",
    "s3:GetBucketVersioning",
    "s3:GetBucketObjectLockConfiguration",
    "s3:GetBucketLocation",
  ]
  write_object_actions = concat(
    ["s3:PutObject", "s3:PutObjectRetention"],
    var.legal_hold ? ["s3:PutObjectLegalHold"] : [],
  )
  mirror = var.anchor_mirror == null ? [] : [var.anchor_mirror]
}

# ---------------------------------------------------------------- daemon

data "aws_iam_policy_document" "daemon_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    dynamic "principals" {
      for_each = length(var.daemon_trusted_services) > 0 ? [var.daemon_trusted_services] : []
      content {
        type        = "Service"
        identifiers = principals.value
      }
    }
    dynamic "principals" {
      for_each = length(var.daemon_trusted_principals) > 0 ? [var.daemon_trusted_principals] : []
      content {
        type        = "AWS"
        identifiers = principals.value
      }
    }
  }
}

resource "aws_iam_role" "daemon" {
  name               = "${var.name}-daemon"
  description        = "wormvault daemon: write-once archive writer"
  assume_role_policy = data.aws_iam_policy_document.daemon_trust.json
  tags               = var.tags
}

resource "aws_iam_instance_profile" "daemon" {
  name = "${var.name}-daemon"
  role = aws_iam_role.daemon.name
  tags = var.tags
}

data "aws_iam_policy_document" "daemon" {
  statement {
    sid       = "ReadBucket"
    actions   = local.read_bucket_actions
    resources = [var.bucket_arn]
  }
  statement {
    sid       = "WriteAndReadObjects"
    actions   = concat(local.write_object_actions, local.read_object_actions)
    resources = [local.objects]
  }
  statement {
    sid       = "UseArchiveKey"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt", "kms:DescribeKey"]
    resources = [var.kms_key_arn]
  }
  dynamic "statement" {
    for_each = local.mirror
    content {
      sid       = "MirrorAnchors"
      actions   = concat(["s3:PutObject", "s3:PutObjectRetention"], local.read_object_actions)
      resources = ["${statement.value.bucket_arn}/*"]
    }
  }
  dynamic "statement" {
    for_each = local.mirror
    content {
      sid       = "ReadMirrorBucket"
      actions   = local.read_bucket_actions
      resources = [statement.value.bucket_arn]
    }
  }
  dynamic "statement" {
    for_each = local.mirror
    content {
      sid       = "UseMirrorKey"
      actions   = ["kms:GenerateDataKey", "kms:Decrypt", "kms:DescribeKey"]
      resources = [statement.value.kms_key_arn]
    }
  }
}

resource "aws_iam_role_policy" "daemon" {
  name   = "wormvault-daemon"
  role   = aws_iam_role.daemon.id
  policy = data.aws_iam_policy_document.daemon.json
}

# ---------------------------------------------------------------- read-only

data "aws_iam_policy_document" "reader_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "AWS"
      identifiers = length(var.reader_trusted_principals) > 0 ? var.reader_trusted_principals : [aws_iam_role.daemon.arn]
    }
  }
}

resource "aws_iam_role" "reader" {
  name               = "${var.name}-reader"
  description        = "wormvault sweeps and retrieval: read only"
  assume_role_policy = data.aws_iam_policy_document.reader_trust.json
  tags               = var.tags
}

data "aws_iam_policy_document" "reader" {
  statement {
    sid       = "ReadBucket"
    actions   = local.read_bucket_actions
    resources = [var.bucket_arn]
  }
  statement {
    sid       = "ReadObjects"
    actions   = local.read_object_actions
    resources = [local.objects]
  }
  statement {
    sid       = "DecryptArchive"
    actions   = ["kms:Decrypt", "kms:DescribeKey"]
    resources = [var.kms_key_arn]
  }
}

resource "aws_iam_role_policy" "reader" {
  name   = "wormvault-reader"
  role   = aws_iam_role.reader.id
  policy = data.aws_iam_policy_document.reader.json
}
