//! The binary's own description of itself: `palaver --version`, and help that names every
//! setting of README's table (and nothing the table leaves out).

use std::collections::BTreeSet;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_palaver");
const README: &str = include_str!("../README.md");

fn run(args: &[&str]) -> String {
    let output = Command::new(BIN)
        .args(args)
        .env_clear()
        .output()
        .expect("run palaver");
    assert!(output.status.success(), "palaver {args:?}: {output:?}");
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// `(flag, variable)` of every row of README's settings table.
fn readme_settings() -> Vec<(String, String)> {
    README
        .lines()
        .filter(|line| line.starts_with("| `--"))
        .map(|line| {
            let cells: Vec<&str> = line
                .split('|')
                .map(|c| c.trim().trim_matches('`'))
                .collect();
            (cells[1].to_owned(), cells[2].to_owned())
        })
        .collect()
}

/// Every `--flag` a help text names.
fn flags(help: &str) -> BTreeSet<String> {
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == '<')
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(|word| {
            word.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_owned()
        })
        .collect()
}

#[test]
fn version_names_the_binary_and_its_version() {
    assert_eq!(
        run(&["--version"]),
        format!("palaver {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(run(&["-V"]), run(&["--version"]));
}

#[test]
fn top_level_help_names_the_serve_command_and_the_version_flag() {
    let help = run(&["--help"]);
    assert!(
        help.contains("A self-hosted real-time chat server"),
        "{help}"
    );
    assert!(help.contains("serve"), "{help}");
    assert!(help.contains("--version"), "{help}");
}

#[test]
fn serve_help_names_every_setting_of_the_readme_and_no_other() {
    let help = run(&["serve", "--help"]);
    let settings = readme_settings();
    assert!(settings.len() >= 28, "README's table: {settings:?}");
    for (flag, variable) in &settings {
        assert!(
            help.contains(flag.as_str()),
            "{flag} is missing from `palaver serve --help`:\n{help}"
        );
        assert!(
            help.contains(variable.as_str()),
            "{variable} is missing from `palaver serve --help`:\n{help}"
        );
    }
    let documented: BTreeSet<String> = settings.into_iter().map(|(flag, _)| flag).collect();
    for flag in flags(&help) {
        assert!(
            flag == "--help" || documented.contains(&flag),
            "{flag} is in `palaver serve --help` but not in README's settings table"
        );
    }
}
