variable "mesh" {
  description = "Mesh name, as in the coordinator's config."
  type        = string
}

variable "site" {
  description = "The site's name (e.g. aws-use1); names and tags of everything made here carry it."
  type        = string
}

variable "coordinators" {
  description = "The coordinators' host:port."
  type        = list(string)
}

variable "vpc_id" {
  description = "The site's VPC: the Route Server is associated with it."
  type        = string
}

variable "gateways" {
  description = "The site's gateways by name (an RFC 1123 label, e.g. gw-1): subnet_id (give each its own subnet, in two availability zones), private_ip (default: the subnet's 10th host), priority (\"active\", the default, or \"standby\"). The names are for_each keys: they must be known at plan time (literal strings), the subnets need not be."
  type = map(object({
    subnet_id  = string
    private_ip = optional(string)
    priority   = optional(string, "active")
  }))
  validation {
    condition     = length(var.gateways) >= 1 && alltrue([for n in keys(var.gateways) : can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", n))])
    error_message = "gateways: at least one, named by RFC 1123 labels (two or more, in two availability zones, for failover)."
  }
}

variable "local_prefixes" {
  description = "The site's prefixes (the VPC CIDRs) the gateways announce to the mesh. They must cover the gateways' subnets: the security groups admit the Route Server endpoints' BGP and BFD from them."
  type        = list(string)
}

variable "route_tables" {
  description = "Route tables (by a name of your choice: the keys must be known at plan time) that get the other sites' prefixes from the Route Server: those of the hosts that reach other sites."
  type        = map(string)
  default     = {}
}

variable "route_server_asn" {
  description = "The Route Server's ASN (amazon_side_asn): the gateways' remote-as."
  type        = number
  default     = 65000
}

variable "gateway_asn" {
  description = "The gateways' ASN (local-as; the same for every gateway of the site)."
  type        = number
  default     = 65001
}

variable "hold_time" {
  description = "BGP hold time of the gateways' sessions (BFD detects a dead gateway sooner)."
  type        = string
  default     = "3s"
}

variable "probe_interval" {
  description = "The gateways' probe-interval: a path is down after 3 lost probes. Set the same (100ms-200ms) on every node of a mesh with several gateways per site."
  type        = string
  default     = "200ms"
}

variable "peer_public_cidrs" {
  description = "Other sites' gateway addresses (by a name known at plan time) admitted to the WireGuard port."
  type        = map(string)
  default     = { any = "0.0.0.0/0" }
}

variable "coordinator_ingress_cidrs" {
  description = "Passed to each gateway (see modules/aws-gateway)."
  type        = list(string)
  default     = []
}

variable "metrics_ingress_cidrs" {
  description = "Who may scrape the gateways' metrics."
  type        = list(string)
  default     = []
}

variable "ssh_ingress_cidrs" {
  description = "Who may SSH to the gateways (default none: use SSM Session Manager)."
  type        = list(string)
  default     = []
}

variable "instance_type" {
  description = "EC2 instance type of the gateways."
  type        = string
  default     = "c6in.large"
}

variable "ami_id" {
  description = "AMI of the gateways (default: the latest Ubuntu 24.04 LTS, whose archive has bird2)."
  type        = string
  default     = null
}

variable "key_name" {
  description = "EC2 key pair for the gateways (optional)."
  type        = string
  default     = null
}

variable "strait_version" {
  description = "Strait release the gateways install (a change replaces them, one at a time if you apply with -target)."
  type        = string
}

variable "strait_release_base_url" {
  description = "https:// base URL of the releases (<base>/<version>/strait-<version>-<target>.tar.gz)."
  type        = string
}

variable "strait_target" {
  description = "Release target."
  type        = string
  default     = "x86_64-unknown-linux-gnu"
}

variable "strait_release_sha256" {
  description = "SHA-256 of the release archive."
  type        = string
}

variable "agent_config_extra" {
  description = "More top-level agent.toml lines for every gateway."
  type        = string
  default     = ""
}

variable "agent_secrets" {
  description = "Per gateway name: its agent secrets (e.g. { gw-1 = { join-token = ... } }); see modules/aws-gateway."
  type        = map(map(string))
  default     = {}
  sensitive   = true
}

variable "vault" {
  description = "Certificates from Vault (see modules/aws-gateway); null: built-in CA with join tokens in agent_secrets."
  type = object({
    address    = string
    pki_mount  = optional(string, "pki")
    pki_role   = string
    auth_mount = optional(string, "aws")
    auth_role  = string
    cert_ttl   = optional(string, "24h")
    ca_cert    = optional(string)
  })
  default = null
}

variable "tags" {
  description = "Tags on everything made here."
  type        = map(string)
  default     = {}
}
