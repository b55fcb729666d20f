# terraform test (from this directory, or deploy/check.sh): plans the module with a mocked
# AWS provider, so no credentials or network are needed. In `command = plan` runs the
# attributes AWS computes (IDs, addresses) are unknown, as in a first plan; `apply` runs
# give them mock values so the rendered config can be checked.

mock_provider "aws" {
  mock_data "aws_subnet" {
    defaults = { cidr_block = "10.10.0.0/24" }
  }
  mock_data "aws_ami" {
    defaults = { id = "ami-0123456789abcdef0" }
  }
}

variables {
  name                    = "gw-1"
  mesh                    = "prod"
  site                    = "aws-use1"
  coordinators            = ["strait-coordinator.example.net:7443"]
  vpc_id                  = "vpc-0123456789abcdef0"
  subnet_id               = "subnet-0123456789abcdef0"
  local_prefixes          = ["10.10.0.0/16"]
  remote_prefixes         = ["10.20.0.0/16", "10.30.0.0/16"]
  route_tables            = { public = "rtb-01", private = "rtb-02" }
  strait_version          = "0.1.0"
  strait_release_base_url = "https://releases.example.net/strait"
  strait_release_sha256   = "0000000000000000000000000000000000000000000000000000000000000000"
  vault = {
    address   = "https://vault.example.net:8200"
    pki_role  = "strait-gateway-aws-use1"
    auth_role = "strait-gateway-aws-use1"
  }
}

run "gateway_with_vault_iam_auth" {
  command = apply

  assert {
    condition     = strcontains(output.agent_config, "auth = \"aws\"") && !strcontains(output.agent_config, "secret-id")
    error_message = "the agent logs in to Vault with AWS IAM auth, with no secret: ${output.agent_config}"
  }
  assert {
    condition     = strcontains(output.agent_config, "metrics-listen = \"10.10.0.10:9464\"")
    error_message = "metrics on the private address only"
  }
  assert {
    condition     = output.release_url == "https://releases.example.net/strait/0.1.0/strait-0.1.0-x86_64-unknown-linux-gnu.tar.gz"
    error_message = "release URL: ${output.release_url}"
  }
  assert {
    condition     = aws_instance.this.user_data_replace_on_change
    error_message = "a new version must replace the instance"
  }
  assert {
    condition     = length(aws_route.remote) == 4 && contains(keys(aws_route.remote), "private|10.30.0.0/16")
    error_message = "a route per (route table, remote prefix), keyed by names"
  }
  assert {
    condition     = aws_security_group.this.name_prefix == "aws-use1-gw-1-" && aws_iam_role.this.name_prefix == "aws-use1-gw-1-"
    error_message = "AWS names are prefixed with the site"
  }
  assert {
    condition     = aws_instance.this.iam_instance_profile == aws_iam_instance_profile.this.name
    error_message = "the instance has the module's instance profile"
  }
}

run "vault_secrets_in_user_data_are_refused" {
  command = plan

  variables {
    agent_secrets = { "vault-secret-id" = "11111111-1111-1111-1111-111111111111" }
  }
  expect_failures = [var.agent_secrets]
}

run "two_sites_whose_addresses_are_known_only_after_apply" {
  command = plan

  # Two gateways admitting each other's Elastic IP and routing into route tables made in
  # the same plan: the shape of examples/aws-gcp ("Invalid for_each argument" before).
  module {
    source = "./tests/two-sites"
  }
}
