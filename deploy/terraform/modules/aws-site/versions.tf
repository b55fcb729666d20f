terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # aws_vpc_route_server* resources (5.100.0 in the local mirror)
      version = "~> 5.100"
    }
  }
}
