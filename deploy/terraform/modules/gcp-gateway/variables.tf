variable "name" {
  description = "Name of the gateway: the instance name, the prefix of its address, firewall rules and routes, and (by default) the Strait node name. An RFC 1123 label."
  type        = string

  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]{0,50}[a-z0-9])?$", var.name))
    error_message = "name must start with a letter, hold a-z, 0-9 and '-', end with a letter or digit, and be at most 52 characters (room for the suffixes of derived names)."
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
  description = "Strait site of this VPC network, as declared in the coordinator's [[sites]] (e.g. gcp-usc1)."
  type        = string
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
  description = "Where other sites' gateways connect from (their public IPs as /32): admitted to the WireGuard port. 0.0.0.0/0 for roaming peers."
  type        = list(string)
  default     = ["0.0.0.0/0"]
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
  description = "TUN MTU (the agent's `mtu`); null lets the agent derive it (a default GCP VPC's 1460 - 80 = 1380)."
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
  description = "Files for /etc/strait/agent-secrets (name => content, e.g. vault-secret-id, join-token); the agent sees /run/credentials/strait-agent.service/secret_<name>. They travel in instance metadata: use short-lived or CIDR-bound secrets."
  type        = map(string)
  default     = {}
  sensitive   = true
}

variable "labels" {
  description = "Labels for the instance and address."
  type        = map(string)
  default     = {}
}
