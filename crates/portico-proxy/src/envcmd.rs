//! `portico env -n NS` and `portico run -n NS -- CMD`: the Service variables a kubelet would
//! give a pod in that namespace, for ordinary local processes.

use std::os::unix::process::CommandExt;

use k8s_openapi::api::core::v1::Service;
use kube::api::ListParams;
use kube::{Api, Client};
use portico_core::envvars::{EnvVar, for_namespace};

/// Flags of `portico env`.
#[derive(clap::Args, Clone, Debug)]
pub struct EnvArgs {
    /// The pod namespace whose Services to expose.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Only the `kubernetes` Service, as for a pod with enableServiceLinks: false.
    #[arg(long)]
    pub no_service_links: bool,
}

/// Flags of `portico run`.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// The pod namespace whose Services to expose.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Only the `kubernetes` Service, as for a pod with enableServiceLinks: false.
    #[arg(long)]
    pub no_service_links: bool,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// The variables for `namespace`, read through the API.
pub async fn vars(
    client: Client,
    namespace: &str,
    service_links: bool,
) -> anyhow::Result<Vec<EnvVar>> {
    let api: Api<Service> = Api::all(client);
    let list = api.list(&ListParams::default()).await?;
    Ok(for_namespace(namespace, &list.items, service_links))
}

/// Single-quotes a value for POSIX shells.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// `export NAME='value'` lines, safe for `eval`. Names that are not valid shell identifiers
/// are skipped (the kubelet would pass them, but a shell cannot export them).
pub fn render_exports(vars: &[EnvVar]) -> String {
    let mut out = String::new();
    for v in vars {
        let valid = !v.name.is_empty()
            && !v.name.starts_with(|c: char| c.is_ascii_digit())
            && v.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if valid {
            out.push_str(&format!("export {}={}\n", v.name, shell_quote(&v.value)));
        }
    }
    out
}

/// `portico env`: prints the export lines.
pub async fn env(client: Client, args: &EnvArgs) -> anyhow::Result<()> {
    let vars = vars(client, &args.namespace, !args.no_service_links).await?;
    print!("{}", render_exports(&vars));
    Ok(())
}

/// `portico run`: replaces this process with the command, the variables set. Returns only
/// on failure.
pub async fn run(client: Client, args: &RunArgs) -> anyhow::Result<()> {
    let vars = vars(client, &args.namespace, !args.no_service_links).await?;
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("portico run needs a command after --"))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(rest);
    for v in &vars {
        cmd.env(&v.name, &v.value);
    }
    let err = cmd.exec();
    Err(anyhow::anyhow!("cannot run {program:?}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_are_shell_safe() {
        let vars = vec![
            EnvVar {
                name: "A_SERVICE_HOST".into(),
                value: "10.0.0.1".into(),
            },
            EnvVar {
                name: "WEIRD".into(),
                value: "it's $(rm -rf /) `x`".into(),
            },
            EnvVar {
                name: "1BAD".into(),
                value: "x".into(),
            },
        ];
        let text = render_exports(&vars);
        assert_eq!(
            text,
            "export A_SERVICE_HOST='10.0.0.1'\nexport WEIRD='it'\\''s $(rm -rf /) `x`'\n"
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{text}printf %s \"$WEIRD\""))
            .output()
            .expect("sh runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's $(rm -rf /) `x`");
    }
}
