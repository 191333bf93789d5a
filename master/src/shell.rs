//! `swarm completions SHELL` and `swarm man [--out-dir DIR]`: shell
//! completion scripts (clap_complete) and man pages (clap_mangen), both
//! generated from the same clap definition as the parser, so they can never
//! list a flag that does not exist.

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs, ManArgs};
use crate::error::{Error, Result};
use crate::output::{self, outln};

/// Print generated text on stdout (a closed stdout ends quietly, as
/// everywhere in `swarm`: [`output`]).
fn print(bytes: &[u8]) -> Result<()> {
    output::write(format_args!("{}", String::from_utf8_lossy(bytes)))
}

/// `swarm completions bash|zsh|fish|elvish|powershell`.
pub(crate) fn completions(args: &CompletionsArgs) -> Result<()> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "swarm", &mut buf);
    print(&buf)
}

/// `swarm man`: swarm(1) on stdout; with `--out-dir DIR`, swarm.1 and one
/// page per subcommand (swarm-update.1, swarm-ca-init.1, …) in DIR.
pub(crate) fn man(args: &ManArgs) -> Result<()> {
    let cmd = Cli::command();
    match &args.out_dir {
        None => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut buf)
                .map_err(|e| Error::io("swarm.1", e))?;
            print(&buf)
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            clap_mangen::generate_to(cmd, dir).map_err(|e| Error::io(dir, e))?;
            outln!("man pages written to {}", dir.display())
        }
    }
}
