variable "aws_region" {
  description = "AWS region of the primary site."
  type        = string
  default     = "us-east-1"
}

variable "gcp_project" {
  description = "GCP project of the second site."
  type        = string
  default     = "my-project"
}

variable "gcp_region" {
  description = "GCP region of the second site."
  type        = string
  default     = "us-central1"
}

variable "mesh" {
  description = "Strait mesh name."
  type        = string
  default     = "prod"
}

variable "coordinators" {
  description = "Coordinator addresses, host:port (e.g. the NLB of deploy/kubernetes/overlays/eks-with-coordinator)."
  type        = list(string)
}

variable "aws_vpc_cidr" {
  description = "The AWS VPC (site aws-use1)."
  type        = string
  default     = "10.10.0.0/16"
}

variable "gcp_vpc_cidr" {
  description = "Address space of the GCP network (site gcp-usc1); its subnetworks are carved from it."
  type        = string
  default     = "10.20.0.0/16"
}

variable "strait_release_url" {
  description = "https:// URL of the Strait release archive (.tar.gz)."
  type        = string
}

variable "strait_release_sha256" {
  description = "SHA-256 of the release archive."
  type        = string
}

variable "vault_address" {
  description = "Vault's address; the gateways get their certificates from its PKI engine with AppRole (docs/vault.md)."
  type        = string
}

variable "aws_gateway_approle" {
  description = "AppRole credentials of the AWS gateway: role_id and a (short-lived, CIDR-bound) secret_id."
  type = object({
    role_id   = string
    secret_id = string
  })
  sensitive = true
}

variable "gcp_gateway_approle" {
  description = "AppRole credentials of the GCP gateway: role_id and a (short-lived, CIDR-bound) secret_id."
  type = object({
    role_id   = string
    secret_id = string
  })
  sensitive = true
}
