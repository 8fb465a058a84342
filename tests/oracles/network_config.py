#!/usr/bin/python3
"""Parses a NoCloud network-config with cloud-init's own parser and prints what it
understood as JSON: interfaces (name, mac, subnets) and DNS. Fails on invalid input."""
import json
import sys

import yaml
from cloudinit.net import network_state

with open(sys.argv[1]) as f:
    cfg = yaml.safe_load(f)
state = network_state.parse_net_config_data(cfg, skip_broken=False)
out = {"interfaces": [], "dns": state.dns_nameservers}
for iface in state.iter_interfaces():
    out["interfaces"].append(
        {
            "name": iface["name"],
            "mac": iface.get("mac_address"),
            "subnets": [
                {
                    "type": s.get("type"),
                    "address": s.get("address"),
                    "prefix": s.get("prefix"),
                    "routes": s.get("routes", []),
                    "dns": s.get("dns_nameservers", []),
                }
                for s in iface.get("subnets", [])
            ],
        }
    )
print(json.dumps(out))
