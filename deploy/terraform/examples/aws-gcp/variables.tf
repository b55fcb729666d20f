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

variable "strait_version" {
  description = "Strait version the gateways run; changing it replaces them (each installs the new release at boot)."
  type        = string
  default     = "0.1.0"
}

variable "strait_release_base_url" {
  description = "https:// URL under which release archives are published as <version>/strait-<version>-<target>.tar.gz."
  type        = string
}

variable "strait_release_sha256" {
  description = "SHA-256 of the release archive of strait_version (its .sha256 file)."
  type        = string
}

variable "vault_address" {
  description = "Vault's address: the gateways get their certificates from its PKI engine, logging in with Vault's AWS and GCP auth methods as their instance identities (docs/vault.md). null: the coordinator's built-in CA, with join_tokens."
  type        = string
  default     = null
}

variable "join_tokens" {
  description = "Without Vault: a single-use join token per gateway, keyed <site>/<gateway> (aws-use1/gw-1, aws-use1/gw-2, gcp-usc1/gw-1, gcp-usc1/gw-2), from `straitctl token create --site SITE --role gateway --ttl 1h`. Used once at first boot; a replaced gateway (a new strait_version) needs new ones."
  type        = map(string)
  default     = {}
  sensitive   = true
}

variable "vault_ca_cert" {
  description = "PEM of the CA that signed Vault's TLS certificate, if it is private; null: the system's roots."
  type        = string
  default     = null
}
