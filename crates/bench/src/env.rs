//! The servers shared by the scenarios of one run.

use anyhow::{anyhow, Result};

use crate::servers::{Nginx, Scfsim, ScfsimSettings, Tools, Websocketd};

/// What a run talks to. nginx and websocketd are optional: a missing one is a skipped column,
/// and its error says why.
pub struct Env {
    pub tools: Tools,
    pub scfsim: Scfsim,
    pub nginx: Result<Nginx>,
    pub websocketd: Result<Websocketd>,
}

impl Env {
    pub async fn start(tools: Tools, nginx: bool, websocketd: bool) -> Result<Env> {
        let scfsim = Scfsim::start(&tools, &ScfsimSettings::default())?;
        let (nginx_wanted, websocketd_wanted) = (nginx, websocketd);
        let nginx = match (&tools.nginx, nginx) {
            (_, false) => Err(anyhow!("not requested")),
            (Err(why), true) => Err(anyhow!("{why:#}")),
            (Ok(path), true) => Nginx::start(path).await,
        };
        let websocketd = match (&tools.websocketd, websocketd) {
            (_, false) => Err(anyhow!("not requested")),
            (Err(why), true) => Err(anyhow!("{why:#}")),
            (Ok(path), true) => Websocketd::start(path).await,
        };
        for (name, wanted, r) in [
            ("nginx", nginx_wanted, nginx.as_ref().err()),
            ("websocketd", websocketd_wanted, websocketd.as_ref().err()),
        ] {
            if let (true, Some(why)) = (wanted, r) {
                eprintln!("scfsim-bench: SKIPPING the {name} column: {why:#}");
            }
        }
        Ok(Env {
            tools,
            scfsim,
            nginx,
            websocketd,
        })
    }
}
