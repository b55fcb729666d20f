variable "name" {
  description = "Name of the gateway within its site: the Strait node name. GCE names are prefixed with the site (<site>-<name>: the instance, its address, firewall rules, routes and service account)."
  type        = string

  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]{0,18}[a-z0-9])?$", var.name))
    error_message = "name must start with a letter, hold a-z, 0-9 and '-', end with a letter or digit, and be at most 20 characters (with the site, room for the suffixes of derived names within GCE's 63)."
  }
}

variable "project" {
  description = "GCP project; default: the provider's."
  type        = string
  default     = null
}

variable "mesh" {
  description = "Strait mesh name (must match the coordinator's `mesh`)."
  type        = string
}

variable "site" {
  description = "Strait site of this VPC network, as declared in the coordinator's [[sites]] (e.g. gcp-usc1); at most 20 characters (it prefixes GCE names)."
  type        = string

  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]{0,18}[a-z0-9])?$", var.site))
    error_message = "site must be an RFC 1123 label of at most 20 characters starting with a letter."
  }
}

variable "coordinators" {
  description = "Coordinator addresses, host:port (e.g. [\"strait-coordinator.example.net:7443\"])."
  type        = list(string)
}

variable "zone" {
  description = "Zone of the gateway instance (e.g. us-central1-a)."
  type        = string
}

variable "network" {
  description = "Self link (or name) of the VPC network the gateway serves."
  type        = string
}

variable "subnetwork" {
  description = "Self link of the subnetwork for the gateway's interface (in the zone's region)."
  type        = string
}

variable "network_ip" {
  description = "The gateway's internal IP in subnetwork; default: the subnetwork's 10th host address. Announced to the mesh as the `private` endpoint."
  type        = string
  default     = null
}

variable "local_prefixes" {
  description = "Prefixes this gateway carries for its site (the VPC's subnet ranges): advertised to the mesh, and admitted by the firewall as traffic to forward."
  type        = list(string)
}

variable "remote_prefixes" {
  description = "Prefixes of the other sites: a route for each sends them to the gateway."
  type        = list(string)
  default     = []
}

variable "route_tags" {
  description = "Instance network tags the remote-prefix routes apply to; empty: every instance in the network."
  type        = list(string)
  default     = []
}

variable "route_priority" {
  description = "Priority of the remote-prefix routes (lower wins)."
  type        = number
  default     = 900
}

variable "workload_target_tags" {
  description = "Network tags of the instances that receive traffic from remote sites (the firewall rule admitting remote_prefixes); empty: every instance in the network."
  type        = list(string)
  default     = []
}

variable "peer_public_cidrs" {
  description = "Where other sites' gateways connect from (their public IPs as /32), by a name of your choice (e.g. { aws-use1 = \"$${module.aws.public_ip}/32\" }): admitted to the WireGuard port. { any = \"0.0.0.0/0\" } for roaming peers."
  type        = map(string)
  default     = { any = "0.0.0.0/0" }
}

variable "interconnect_address" {
  description = "Optional address:port at which other sites reach this gateway over a dedicated link (Cloud Interconnect, Megaport), announced as an `interconnect` endpoint. Usually the instance's VPC address: the agent's WireGuard datagrams skip Strait's routing table, so an address inside the prefixes the mesh carries is reached over the underlay."
  type        = string
  default     = null
}

variable "wireguard_port" {
  description = "The agent's WireGuard UDP port (listen-port); probes use it too."
  type        = number
  default     = 51820
}

variable "metrics_port" {
  description = "The agent's metrics-listen port (/metrics, /healthz, /readyz)."
  type        = number
  default     = 9464
}

variable "metrics_source_ranges" {
  description = "Who may scrape the agent's metrics (TCP metrics_port). Empty: no rule."
  type        = list(string)
  default     = []
}

variable "mtu" {
  description = "TUN MTU (the agent's `mtu`). null (the default) lets the agent discover each path's MTU and set it per peer; a number fixes the TUN MTU and turns per-path MTUs off."
  type        = number
  default     = null
}

variable "machine_type" {
  description = "Machine type; network bandwidth scales with vCPUs (the agent uses two cores under load)."
  type        = string
  default     = "n2-standard-2"
}

variable "image" {
  description = "Boot image with cloud-init and systemd >= 250 (Google's Debian images have no cloud-init)."
  type        = string
  default     = "ubuntu-os-cloud/ubuntu-2404-lts-amd64"
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
  description = "Target triple of the release archive; it must match the machine type's architecture."
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
  description = "Files for /etc/strait/agent-secrets (name => content); the agent sees /run/credentials/strait-agent.service/secret_<name>. For a single-use join token (built-in CA) only: instance metadata and Terraform state keep it. Vault needs no secret here: use var.vault (GCP IAM auth)."
  type        = map(string)
  default     = {}
  sensitive   = true

  validation {
    condition     = length(setintersection(keys(var.agent_secrets), ["vault-secret-id", "vault-token"])) == 0
    error_message = "agent_secrets must not carry Vault credentials (they would stay in metadata and state): set var.vault, which logs in with the instance's service account."
  }
}

variable "vault" {
  description = "Certificates from Vault's PKI engine, logging in with Vault's GCP auth method (type gce) as the instance's service account (output service_account_email: bind it with bound_service_accounts). address, pki_role (e.g. strait-gateway-gcp-usc1), auth_role (the gcp auth method's role); pki_mount, auth_mount and cert_ttl have defaults; ca_cert is the PEM of a private CA for Vault's TLS certificate. null: no [vault] table (built-in CA with a join token)."
  type = object({
    address    = string
    pki_role   = string
    auth_role  = string
    pki_mount  = optional(string, "pki")
    auth_mount = optional(string, "gcp")
    cert_ttl   = optional(string, "24h")
    ca_cert    = optional(string)
  })
  default = null
}

variable "labels" {
  description = "Labels for the instance and address."
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
  description = "Announce the other sites' prefixes over BGP (BIRD 2 beside the agent, installed by install.sh from the [bgp] table): local_as (this gateway's AS), neighbors (the routers: address and remote_as, e.g. the two interfaces of the Cloud Router the NCC router-appliance spoke peers with, remote_as its ASN), bfd (default true), hold_time (default \"3s\"). null: no [bgp]; use route_tables for static routes instead."
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
