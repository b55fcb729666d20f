variable "name" {
  description = "Name of the gateway: the EC2 Name tag, the prefix of its security group and Elastic IP, and (by default) the Strait node name. An RFC 1123 label."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.name))
    error_message = "name must be an RFC 1123 label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'."
  }
}

variable "mesh" {
  description = "Strait mesh name (must match the coordinator's `mesh`)."
  type        = string
}

variable "site" {
  description = "Strait site of this VPC, as declared in the coordinator's [[sites]] (e.g. aws-use1)."
  type        = string
}

variable "coordinators" {
  description = "Coordinator addresses, host:port (e.g. [\"strait-coordinator.example.net:7443\"])."
  type        = list(string)
}

variable "vpc_id" {
  description = "VPC the gateway serves."
  type        = string
}

variable "subnet_id" {
  description = "Public subnet for the gateway (a route to an internet gateway, so the Elastic IP works)."
  type        = string
}

variable "private_ip" {
  description = "The gateway's private IP in subnet_id; default: the subnet's 10th host address. Announced to the mesh as the `private` endpoint."
  type        = string
  default     = null
}

variable "local_prefixes" {
  description = "Prefixes this gateway carries for its site (the VPC CIDRs): advertised to the mesh, and admitted by the security group as traffic to forward."
  type        = list(string)
}

variable "remote_prefixes" {
  description = "Prefixes of the other sites: routed to this gateway in route_table_ids."
  type        = list(string)
  default     = []
}

variable "route_table_ids" {
  description = "Route tables of the VPC whose subnets should reach remote_prefixes through the gateway."
  type        = list(string)
  default     = []
}

variable "peer_public_cidrs" {
  description = "Where other sites' gateways connect from (their public IPs as /32): admitted to the WireGuard port. 0.0.0.0/0 for roaming peers."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "interconnect_address" {
  description = "Optional address:port at which other sites reach this gateway over a dedicated link (Direct Connect, Megaport), announced as an `interconnect` endpoint. Usually the instance's VPC address: the agent's WireGuard datagrams skip Strait's routing table, so an address inside the prefixes the mesh carries is reached over the underlay."
  type        = string
  default     = null
}

variable "wireguard_port" {
  description = "The agent's WireGuard UDP port (listen-port); probes use it too."
  type        = number
  default     = 51820
}

variable "coordinator_port" {
  description = "UDP port of strait-coordinator, opened to coordinator_ingress_cidrs when this instance also runs the coordinator."
  type        = number
  default     = 7443
}

variable "coordinator_ingress_cidrs" {
  description = "Who may reach a coordinator on this instance (UDP coordinator_port). Empty: no rule (the coordinator runs elsewhere)."
  type        = list(string)
  default     = []
}

variable "metrics_port" {
  description = "The agent's metrics-listen port (/metrics, /healthz, /readyz)."
  type        = number
  default     = 9464
}

variable "metrics_ingress_cidrs" {
  description = "Who may scrape the agent's metrics (TCP metrics_port), e.g. the Prometheus subnet. Empty: no rule."
  type        = list(string)
  default     = []
}

variable "ssh_ingress_cidrs" {
  description = "Who may SSH to the gateway. Empty (the default): no SSH rule; use SSM Session Manager."
  type        = list(string)
  default     = []
}

variable "mtu" {
  description = "TUN MTU (the agent's `mtu`). EC2's 9001-byte interface MTU does not hold on paths leaving the VPC: 1380 fits a 1460-byte underlay (GCP) and a 1500-byte internet path."
  type        = number
  default     = 1380
}

variable "instance_type" {
  description = "EC2 instance type; network bandwidth scales with size (the agent uses two cores under load)."
  type        = string
  default     = "c6in.large"
}

variable "ami_id" {
  description = "AMI with cloud-init and systemd >= 250; default: the latest Ubuntu 24.04 LTS (amd64) from Canonical."
  type        = string
  default     = null
}

variable "key_name" {
  description = "EC2 key pair for SSH, if any."
  type        = string
  default     = null
}

variable "strait_release_url" {
  description = "https:// URL of the Strait release archive (.tar.gz holding strait-agent); install.sh installs it at first boot."
  type        = string
}

variable "strait_release_sha256" {
  description = "SHA-256 of the release archive (64 hex digits); install.sh refuses a mismatch."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-fA-F]{64}$", var.strait_release_sha256))
    error_message = "strait_release_sha256 must be 64 hex digits."
  }
}

variable "agent_config_extra" {
  description = "TOML appended to the generated agent.toml, e.g. a [vault] table (docs/vault.md) or join-token-file. Tables only: top-level keys must come before it."
  type        = string
  default     = ""
}

variable "agent_secrets" {
  description = "Files for /etc/strait/agent-secrets (name => content, e.g. vault-secret-id, join-token); the agent sees /run/credentials/strait-agent.service/secret_<name>. They travel in user data: use short-lived or CIDR-bound secrets."
  type        = map(string)
  default     = {}
  sensitive   = true
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
