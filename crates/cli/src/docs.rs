//! `tandem completions <shell>` and `tandem man`: generated at run time from the same
//! clap command that parses the arguments, so they never lag behind it. Printed on
//! stdout, for packagers and users to put where their shell or `man` looks.

use std::process::ExitCode;

use clap_complete::Shell;

use crate::{cli_command, print_stdout};

/// A completion script for `shell`.
pub fn completions(shell: Shell) -> anyhow::Result<ExitCode> {
    let mut command = cli_command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "tandem", &mut script);
    print_stdout(&String::from_utf8(script)?)?;
    Ok(ExitCode::SUCCESS)
}

/// The manual page, in roff: the top page with every subcommand's options and help.
pub fn man() -> anyhow::Result<ExitCode> {
    let command = cli_command();
    let mut page = Vec::new();
    render(&command, &mut page)?;
    print_stdout(&String::from_utf8(page)?)?;
    Ok(ExitCode::SUCCESS)
}

/// `tandem(1)`, with a section per subcommand (clap_mangen renders one command a
/// page; one page is what `man tandem` finds).
fn render(command: &clap::Command, out: &mut Vec<u8>) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(command.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    man.render_subcommands_section(out)?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        out.extend_from_slice(
            format!(".SH \"TANDEM {}\"\n", sub.get_name().to_uppercase()).as_bytes(),
        );
        let sub_man =
            clap_mangen::Man::new(sub.clone().bin_name(format!("tandem {}", sub.get_name())));
        sub_man.render_synopsis_section(out)?;
        sub_man.render_description_section(out)?;
        sub_man.render_options_section(out)?;
    }
    man.render_extra_section(out)?;
    man.render_version_section(out)?;
    Ok(())
}
