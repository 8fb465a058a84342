//! Which nodes a build makes: the inventory, the selection and the CI shard.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::request::Selection;
use crate::config::{Cluster, Node};

/// Picks the nodes to build: every node, named ones, or one ad-hoc node (added to `cluster`
/// so it is validated with the rest). `config` names the inventory in messages.
pub fn select_nodes(cluster: &mut Cluster, select: &Selection, config: &Path) -> Result<Vec<Node>> {
    match select {
        Selection::AdHoc(adhoc) => {
            let name = match &adhoc.name {
                Some(n) => n.clone(),
                None => {
                    let suffix: u32 = rand::random::<u32>() & 0xffffff;
                    format!("{}-{}-{suffix:06x}", adhoc.role, adhoc.board)
                }
            };
            if cluster.node(&name).is_some() {
                bail!(
                    "a node named '{name}' is already in {}: build it with --node {name}, or pick another --name",
                    config.display()
                );
            }
            let name = crate::config::Hostname::try_from(name)
                .map_err(|e| anyhow::anyhow!("--name: {e}"))?;
            let node = Node {
                name,
                board: adhoc.board.clone(),
                os: None,
                role: adhoc.role,
                ip: None,
                mac: None,
                serial: None,
                labels: BTreeMap::new(),
                overlays: Vec::new(),
                images: Vec::new(),
                wifi: None,
            };
            cluster.nodes.push(node.clone());
            cluster
                .validate()
                .context("the ad-hoc node does not fit the inventory")?;
            Ok(vec![node])
        }
        Selection::All => {
            if cluster.nodes.is_empty() {
                bail!(
                    "{} lists no nodes: add some under `nodes:`",
                    config.display()
                );
            }
            Ok(cluster.nodes.clone())
        }
        Selection::Named(names) if names.is_empty() => bail!(
            "nothing to build: name nodes with --node NAME (or --all), or build an ad-hoc node with --board BOARD --role ROLE"
        ),
        Selection::Named(names) => names
            .iter()
            .map(|n| {
                cluster.node(n).cloned().with_context(|| {
                    let known: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
                    format!(
                        "no node '{n}' in {} (nodes: {})",
                        config.display(),
                        known.join(", ")
                    )
                })
            })
            .collect(),
    }
}

/// The nodes of shard `i` of `n` (1-based): every n-th node from the i-th, in the given order.
pub fn shard<T>(items: Vec<T>, (i, n): (usize, usize)) -> Vec<T> {
    items
        .into_iter()
        .enumerate()
        .filter(|(k, _)| k % n == i - 1)
        .map(|(_, t)| t)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_nodes() {
        let nodes: Vec<u32> = (0..10).collect();
        let mut all: Vec<u32> = (1..=3).flat_map(|i| shard(nodes.clone(), (i, 3))).collect();
        assert_eq!(shard(nodes.clone(), (1, 3)), [0, 3, 6, 9]);
        assert_eq!(shard(nodes.clone(), (3, 3)), [2, 5, 8]);
        all.sort();
        assert_eq!(all, nodes, "every node in exactly one shard");
        assert_eq!(shard(nodes.clone(), (1, 1)), nodes);
    }
}
