variable "name" {
  description = "Name of the gateway within its site: the Strait node name. AWS names and tags are prefixed with the site (<site>-<name>, e.g. aws-use1-gw-1). An RFC 1123 label."
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
  description = "Prefixes of the other sites: routed to this gateway in route_tables."
  type        = list(string)
  default     = []
}

variable "route_tables" {
  description = "Route tables of the VPC whose subnets should reach remote_prefixes through the gateway, by a name of your choice (e.g. { private = aws_route_table.private.id }): the names key the routes, so the IDs may be unknown until apply."
  type        = map(string)
  default     = {}
}

variable "peer_public_cidrs" {
  description = "Where other sites' gateways connect from (their public IPs as /32), by a name of your choice (e.g. { gcp-usc1 = \"$${module.gcp.public_ip}/32\" }): admitted to the WireGuard port. The names key the rules, so the addresses may be unknown until apply. { any = \"0.0.0.0/0\" } for roaming peers."
  type        = map(string)
  default     = { any = "0.0.0.0/0" }
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
  description = "TUN MTU (the agent's `mtu`). null (the default) lets the agent discover each path's MTU (EC2's 9001 inside the VPC, 1500 or less beyond it) and set it per peer; a number fixes the TUN MTU and turns per-path MTUs off."
  type        = number
  default     = null
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

variable "strait_version" {
  description = "Strait version the gateway runs (e.g. 0.1.0). Changing it (or strait_release_sha256, or anything else in the user data) replaces the instance, which installs the new release at first boot and gets its certificate from Vault again."
  type        = string

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+([-+][0-9A-Za-z.-]+)?$", var.strait_version))
    error_message = "strait_version must be a version such as 0.1.0."
  }
}

variable "strait_release_base_url" {
  description = "https:// URL under which releases are published as <version>/strait-<version>-<target>.tar.gz (deploy/release/archive.sh names them)."
  type        = string

  validation {
    condition     = startswith(var.strait_release_base_url, "https://")
    error_message = "strait_release_base_url must be an https:// URL: install.sh refuses plain http."
  }
}

variable "strait_target" {
  description = "Target triple of the release archive; it must match the instance type's architecture."
  type        = string
  default     = "x86_64-unknown-linux-gnu"
}

variable "strait_release_sha256" {
  description = "SHA-256 of the release archive (64 hex digits, the published .sha256 file); install.sh refuses a mismatch."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-fA-F]{64}$", var.strait_release_sha256))
    error_message = "strait_release_sha256 must be 64 hex digits."
  }
}

variable "agent_config_extra" {
  description = "TOML lines added to the generated agent.toml after its top-level keys and before the [vault] table of var.vault, e.g. join-token-file = \"/run/credentials/strait-agent.service/secret_join-token\" (built-in CA) or fail-closed = false."
  type        = string
  default     = ""
}

variable "agent_secrets" {
  description = "Files for /etc/strait/agent-secrets (name => content); the agent sees /run/credentials/strait-agent.service/secret_<name>. For a single-use join token (built-in CA, `join-token` with agent_config_extra = \"join-token-file = ...\") only: user data and Terraform state keep it. Vault needs no secret here: use var.vault (AWS IAM auth)."
  type        = map(string)
  default     = {}
  sensitive   = true

  validation {
    condition     = length(setintersection(keys(var.agent_secrets), ["vault-secret-id", "vault-token"])) == 0
    error_message = "agent_secrets must not carry Vault credentials (they would stay in user data and state): set var.vault, which logs in with the instance's IAM role."
  }
}

variable "vault" {
  description = "Certificates from Vault's PKI engine, logging in with Vault's AWS auth method (iam) as the instance's IAM role (output iam_role_arn: bind it with bound_iam_principal_arn). address, pki_role (e.g. strait-gateway-aws-use1), auth_role (the aws auth method's role); pki_mount, auth_mount and cert_ttl have defaults; ca_cert is the PEM of a private CA for Vault's TLS certificate. null: no [vault] table (built-in CA with a join token)."
  type = object({
    address    = string
    pki_role   = string
    auth_role  = string
    pki_mount  = optional(string, "pki")
    auth_mount = optional(string, "aws")
    cert_ttl   = optional(string, "24h")
    ca_cert    = optional(string)
  })
  default = null
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}

variable "gateway_priority" {
  description = "`gateway-priority` of this gateway: \"active\" (every active gateway of a site carries traffic) or \"standby\" (used only while no active one is reachable; with bgp, announced with a longer AS path and a higher MED)."
  type        = string
  default     = "active"
  validation {
    condition     = contains(["active", "standby"], var.gateway_priority)
    error_message = "gateway_priority must be \"active\" or \"standby\"."
  }
}

variable "bgp" {
  description = "Announce the other sites' prefixes over BGP (BIRD 2 beside the agent, installed by install.sh from the [bgp] table): local_as (this gateway's AS), neighbors (the routers: address and remote_as, e.g. the VPC Route Server endpoints; modules/aws-site wires them), bfd (default true), hold_time (default \"3s\"). null: no [bgp]; use route_tables for static routes instead."
  type = object({
    local_as = number
    neighbors = list(object({
      address   = string
      remote_as = number
    }))
    bfd       = optional(bool, true)
    hold_time = optional(string, "3s")
  })
  default = null
  validation {
    condition     = var.bgp == null || try(length(var.bgp.neighbors) > 0, false)
    error_message = "bgp.neighbors must list at least one router."
  }
}
