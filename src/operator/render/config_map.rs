//! The ConfigMap carrying the PipelineConfig every workload reads.

use serde_json::{Value, json};

use super::RenderError;
use super::common::{CONFIG_FILE, Context};
use crate::pipeline::PipelineConfig;

pub fn pipeline(ctx: &Context, config: &PipelineConfig) -> Result<Value, RenderError> {
    let body = serde_json::to_string_pretty(config).map_err(RenderError::Config)?;
    let mut meta = ctx.metadata(&super::config_map_name(ctx.platform), "config");
    meta["annotations"] = json!({ super::common::CONFIG_HASH_ANNOTATION: ctx.hash });
    Ok(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": { CONFIG_FILE: body },
    }))
}
