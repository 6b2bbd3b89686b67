//! `tendctl audit`: the tenant's audit log, with the API's filters.

use super::{list, print_list};
use crate::Ctx;
use crate::cli::AuditArgs;
use crate::exit::{Exit, Failure};
use crate::output;

pub(super) async fn run(ctx: &Ctx, a: AuditArgs) -> Result<Exit, Failure> {
    let client = ctx.client()?;
    let mut query = Vec::new();
    let mut again = String::from("tendctl audit");
    for (name, value) in [
        ("actor", a.actor),
        ("action", a.action),
        ("target", a.target),
        ("since", a.since),
        ("until", a.until),
    ] {
        if let Some(v) = value {
            again.push_str(&format!(" --{name} {v}"));
            query.push((name, v));
        }
    }
    let answer = list(&client, "/audit", query, &a.page).await?;
    print_list(ctx, &answer, output::audit, &again);
    Ok(Exit::Ok)
}
