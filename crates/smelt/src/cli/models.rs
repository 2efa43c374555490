//! `smelt pull`, `smelt list`, `smelt rm`: the local model cache.

use anyhow::Result;
use clap::Args;

use crate::hub::{aliases, Hub};
use crate::util::human_bytes;

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Alias (smollm2-135m, gemma3-270m), `org/name`, or `org/name:file.gguf`.
    pub model: String,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Also list the built-in aliases.
    #[arg(long)]
    pub aliases: bool,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Name as shown by `smelt list`.
    pub name: String,
}

pub fn pull(a: PullArgs) -> Result<()> {
    let src = Hub::from_env()?.pull(&a.model)?;
    println!("{}", src.path().display());
    Ok(())
}

pub fn list(a: ListArgs) -> Result<()> {
    let hub = Hub::from_env()?;
    let models = hub.list()?;
    if models.is_empty() {
        println!("no models cached in {} (try: smelt pull smollm2-135m)", hub.root().display());
    } else {
        println!("{:<44} {:<7} {:>9}  {:<20} PATH", "NAME", "KIND", "SIZE", "FETCHED");
        for m in &models {
            let fetched: String = m.fetched_at.chars().take(19).collect();
            println!("{:<44} {:<7} {:>9}  {:<20} {}", m.name, m.kind.to_string(), human_bytes(m.size_on_disk), fetched, m.path.display());
        }
    }
    if a.aliases {
        println!();
        println!("{:<16} ABOUT", "ALIAS");
        for al in aliases() {
            println!("{:<16} {}", al.name, al.about);
        }
    }
    Ok(())
}

pub fn rm(a: RmArgs) -> Result<()> {
    let freed = Hub::from_env()?.remove(&a.name)?;
    println!("removed {} ({} freed)", a.name, human_bytes(freed));
    Ok(())
}
