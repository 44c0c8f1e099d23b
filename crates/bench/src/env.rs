//! The servers shared by the scenarios of one run.

use anyhow::Result;

use crate::servers::{Nginx, Scfsim, ScfsimSettings, Tools, Websocketd};

/// What a run talks to. nginx and websocketd are optional: a missing one is a skipped column,
/// with the reason in `*_missing`.
pub struct Env {
    pub tools: Tools,
    pub scfsim: Scfsim,
    pub nginx: Result<Nginx, String>,
    pub websocketd: Result<Websocketd, String>,
}

impl Env {
    pub async fn start(tools: Tools, nginx: bool, websocketd: bool) -> Result<Env> {
        let scfsim = Scfsim::start(&tools, &ScfsimSettings::default())?;
        let nginx = match (&tools.nginx, nginx) {
            (_, false) => Err("not requested".to_string()),
            (Err(why), true) => Err(why.clone()),
            (Ok(path), true) => Nginx::start(path).await.map_err(|e| format!("{e:#}")),
        };
        let websocketd = match (&tools.websocketd, websocketd) {
            (_, false) => Err("not requested".to_string()),
            (Err(why), true) => Err(why.clone()),
            (Ok(path), true) => Websocketd::start(path).await.map_err(|e| format!("{e:#}")),
        };
        for (name, r) in [
            ("nginx", nginx.as_ref().err()),
            ("websocketd", websocketd.as_ref().err()),
        ] {
            if let Some(why) = r.filter(|w| w.as_str() != "not requested") {
                eprintln!("scfsim-bench: SKIPPING the {name} column: {why}");
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
