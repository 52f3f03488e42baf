//! `sluice subscription add|list|remove|emails`: the caller's e-mail subscriptions on a running
//! server (`/api/v1/me/subscriptions`, `/api/v1/me/emails`).

use clap::Args;
use serde_json::json;

use super::client::Api;
use super::{CliResult, ServerArgs};

#[derive(clap::Subcommand)]
pub enum SubscriptionCommand {
    /// Subscribe an address; prints the subscription's id.
    Add(AddArgs),
    /// List your subscriptions.
    List(ServerOnly),
    /// Unsubscribe (e-mails not sent yet are dropped).
    Remove(RemoveArgs),
    /// The e-mails your subscriptions caused, newest first, with their delivery state.
    Emails(ServerOnly),
}

#[derive(Args)]
pub struct AddArgs {
    /// Where to send the e-mails.
    pub address: String,
    /// Comma-separated, of `completed`, `failed` (an import's end) and `needs_mapping` (a
    /// source's run parked, admins); default `completed,failed`.
    #[arg(long, value_delimiter = ',')]
    pub events: Vec<String>,
    /// `mine` (the imports you start) or `organisation` (every import of the organisation,
    /// admins).
    #[arg(long, default_value = "mine")]
    pub scope: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args)]
pub struct RemoveArgs {
    /// The subscription's id (`sluice subscription list`).
    pub id: i64,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args)]
pub struct ServerOnly {
    #[command(flatten)]
    pub server: ServerArgs,
}

pub async fn run(cmd: SubscriptionCommand) -> CliResult {
    match cmd {
        SubscriptionCommand::Add(args) => {
            let api = Api::new(&args.server)?;
            let mut body = json!({"address": args.address, "scope": args.scope});
            if !args.events.is_empty() {
                body["events"] = json!(args.events);
            }
            let (_, answer) = api
                .send(
                    api.request(reqwest::Method::POST, "/api/v1/me/subscriptions")
                        .json(&body),
                )
                .await?;
            println!("{}", answer["data"]["id"]);
        }
        SubscriptionCommand::List(args) => {
            let api = Api::new(&args.server)?;
            let body = api.get("/api/v1/me/subscriptions").await?;
            println!("ID\tADDRESS\tEVENTS\tSCOPE");
            for s in body["data"]["subscriptions"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let events: Vec<&str> = s["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.as_str())
                    .collect();
                println!(
                    "{}\t{}\t{}\t{}",
                    s["id"],
                    s["address"].as_str().unwrap_or(""),
                    events.join(","),
                    s["scope"].as_str().unwrap_or("")
                );
            }
        }
        SubscriptionCommand::Remove(args) => {
            let api = Api::new(&args.server)?;
            let path = format!("/api/v1/me/subscriptions/{}", args.id);
            api.send(api.request(reqwest::Method::DELETE, &path))
                .await?;
            println!("unsubscribed {}", args.id);
        }
        SubscriptionCommand::Emails(args) => {
            let api = Api::new(&args.server)?;
            let body = api.get("/api/v1/me/emails").await?;
            println!("ID\tSTATE\tATTEMPTS\tADDRESS\tSUBJECT\tLAST ERROR");
            for e in body["data"]["emails"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    e["id"],
                    e["state"].as_str().unwrap_or(""),
                    e["attempts"],
                    e["address"].as_str().unwrap_or(""),
                    e["subject"].as_str().unwrap_or(""),
                    e["lastError"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}
