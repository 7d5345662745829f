//! `shoal completions SHELL`: the completion script of a shell on stdout (clap_complete).
//!
//! Install it where the shell looks, e.g. bash:
//! `shoal completions bash > ~/.local/share/bash-completion/completions/shoal`; zsh: a file
//! `_shoal` in a directory of `$fpath`; fish: `~/.config/fish/completions/shoal.fish`.

/// Writes the completions of `cmd` (the whole command line, `Cli::command()`) for `shell`.
pub fn run(shell: clap_complete::Shell, cmd: &mut clap::Command) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, cmd, name, &mut std::io::stdout());
}
