//! `cargo xtask test`: what the tests need, installed where it is missing, then every test, each
//! stage timed. The README's test command and `.ci/run` both run it, so they cannot drift apart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Something the tests need from the system, how to tell it is there, and Debian's packages for it.
struct Need {
    /// What it is and which tests need it.
    why: &'static str,
    present: fn() -> bool,
    packages: &'static [&'static str],
}

const NEEDS: [Need; 6] = [
    Need {
        why: "a font, for the figure tests (they render the SVGs' text)",
        present: has_font,
        packages: &["fonts-dejavu-core"],
    },
    Need {
        why: "Chromium, for the report test (a real browser draws the benchmark page)",
        present: has_chromium,
        packages: &["chromium"],
    },
    Need {
        why: "Open MPI, for the two-rank data-parallel tests (mpirun, and mpi.h for the mpi crate)",
        present: has_open_mpi,
        packages: &["libopenmpi-dev", "openmpi-bin"],
    },
    Need {
        why: "libclang, with which the mpi crate generates its bindings to MPI",
        present: has_libclang,
        packages: &["libclang-dev"],
    },
    Need {
        why: "iproute2 (ip, tc), for the emulated-cluster test, which runs as root",
        present: has_iproute2_or_cannot_use_it,
        packages: &["iproute2"],
    },
    Need {
        why: "Python's pip, to fetch NVIDIA's NVRTC wheel, which compiles the CUDA kernels (no GPU needed)",
        present: has_pip,
        packages: &["python3-pip"],
    },
];

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A Debian package installed (false where there is no dpkg).
fn deb_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn has_font() -> bool {
    fn any_font(dir: &Path, depth: usize) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return false;
        };
        entries.flatten().any(|e| {
            let p = e.path();
            if p.is_dir() {
                depth > 0 && any_font(&p, depth - 1)
            } else {
                p.extension()
                    .is_some_and(|x| x.eq_ignore_ascii_case("ttf") || x.eq_ignore_ascii_case("otf"))
            }
        })
    }
    ["/usr/share/fonts", "/usr/local/share/fonts"]
        .iter()
        .any(|d| any_font(Path::new(d), 4))
}

/// As the report test looks for it.
fn has_chromium() -> bool {
    std::env::var_os("VGG_CHROMIUM").is_some()
        || [
            "chromium",
            "chromium-browser",
            "google-chrome",
            "google-chrome-stable",
        ]
        .iter()
        .any(|n| on_path(n).is_some())
}

fn has_open_mpi() -> bool {
    on_path("mpirun").is_some() && (deb_installed("libopenmpi-dev") || on_path("mpicc").is_some())
}

fn has_libclang() -> bool {
    std::env::var_os("LIBCLANG_PATH").is_some() || deb_installed("libclang-dev")
}

fn has_pip() -> bool {
    succeeds("python3", &["-m", "pip", "--version"])
}

/// Only root makes the emulated cluster's namespaces; others skip its test and need no iproute2.
fn has_iproute2_or_cannot_use_it() -> bool {
    !is_root() || (on_path("ip").is_some() && on_path("tc").is_some())
}

/// Why the emulated-cluster test cannot run here, if it cannot: it needs root and a kernel (or
/// container) that lets root make network namespaces.
fn cluster_unavailable() -> Option<String> {
    if !is_root() {
        return Some("it needs root, to make network namespaces".into());
    }
    let probe = format!("vggprobe{}", std::process::id());
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Ok(out) if out.status.success() => {
            let _ = Command::new("ip")
                .args(["netns", "delete", &probe])
                .output();
            None
        }
        Ok(out) => Some(format!(
            "this machine refuses network namespaces: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run ip: {e}")),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Installs what is missing with apt-get (as root, or through sudo without a password), saying
/// what and why; elsewhere stops with the command to run.
fn install_missing() -> Result<()> {
    let missing: Vec<&Need> = NEEDS.iter().filter(|n| !(n.present)()).collect();
    if missing.is_empty() {
        eprintln!("== the tests' system needs are all here");
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().flat_map(|n| n.packages).copied().collect();
    eprintln!("== the tests need, and this machine lacks:");
    for n in &missing {
        eprintln!("   - {} [{}]", n.why, n.packages.join(" "));
    }
    let command = format!(
        "apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    );
    if on_path("apt-get").is_none() {
        bail!(
            "no apt-get here: install the equivalents of these Debian packages with this system's \
             package manager, then run `cargo xtask test` again: {}",
            packages.join(" ")
        );
    }
    let sudo: &[&str] = if is_root() {
        &[]
    } else if succeeds("sudo", &["-n", "true"]) {
        &["sudo"]
    } else {
        bail!(
            "installing them needs root: run `sudo apt-get update && sudo {command}`, then \
             `cargo xtask test` again"
        );
    };
    eprintln!(
        "== installing them: {}apt-get update && {}{command}",
        sudo.iter().map(|s| format!("{s} ")).collect::<String>(),
        sudo.iter().map(|s| format!("{s} ")).collect::<String>()
    );
    let apt = |args: &[&str]| -> Result<()> {
        let (program, rest) = match sudo.first() {
            Some(s) => (*s, [&["apt-get"][..], args].concat()),
            None => ("apt-get", args.to_vec()),
        };
        // dpkg's progress on stdout is hundreds of lines; its errors stay on stderr.
        let status = Command::new(program)
            .args(&rest)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::process::Stdio::null())
            .status()
            .with_context(|| format!("running {program}"))?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&packages);
    apt(&install)?;
    let still: Vec<&str> = missing
        .iter()
        .filter(|n| !(n.present)())
        .map(|n| n.why)
        .collect();
    if !still.is_empty() {
        bail!("still missing after the install: {}", still.join("; "));
    }
    Ok(())
}

/// Runs one stage, returning its seconds.
fn stage(name: &str, command: &mut Command) -> Result<f64> {
    eprintln!("== {name}");
    let start = Instant::now();
    let status = command
        .status()
        .with_context(|| format!("starting {name}"))?;
    let seconds = start.elapsed().as_secs_f64();
    if !status.success() {
        bail!("{name} failed ({status}) after {seconds:.0} s");
    }
    eprintln!("== {name}: passed in {seconds:.0} s");
    Ok(seconds)
}

fn cargo() -> Command {
    Command::new(super::cargo_program())
}

/// Where NVIDIA's NVRTC wheel is unpacked: beside the build, kept between runs.
fn nvrtc_dir() -> PathBuf {
    super::target_dir().join("nvrtc-13")
}

/// `cargo xtask test [--setup-only]`.
pub fn run(args: &[String]) -> Result<()> {
    let setup_only = match args {
        [] => false,
        [a] if a == "--setup-only" => true,
        _ => bail!("usage: cargo xtask test [--setup-only]"),
    };
    let start = Instant::now();
    install_missing()?;
    let setup = start.elapsed().as_secs_f64();
    if setup_only {
        return Ok(());
    }
    let mut times = vec![("installing what the tests need", setup)];
    // The tests build in the release profile, as `cargo xtask bench` and `vgg` do: the README's two
    // commands share one build of every dependency (measured on a fresh clone, 2-core Zen 3: the
    // test build after the release `vgg` took 465 s in the dev profile, 218 s in release).
    let locked = ["--locked", "--release"];
    times.push((
        "the tests (cargo test --workspace --release)",
        stage(
            "the tests (cargo test --workspace --release)",
            // Every failing test binary is reported, not only the first.
            cargo()
                .args(["test", "--workspace", "--no-fail-fast"])
                .args(locked),
        )?,
    ));
    // The MPI tests, which the emulated cluster's test is one of (it runs only as root).
    let mpi_tests = || {
        let mut command = cargo();
        command
            .args([
                "test",
                "-p",
                "vgg-cli",
                "--features",
                "mpi",
                "--test",
                "cli_mpi",
            ])
            .args(locked);
        command
    };
    times.push((
        "the two-rank MPI tests",
        stage(
            "the two-rank MPI tests (feature mpi, under mpirun)",
            mpi_tests()
                // Containers and CI run as root, which Open MPI refuses unless told.
                .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
                .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
        )?,
    ));
    let mut skipped = Vec::new();
    let cluster = "the emulated two-host cluster (network namespaces, tc, Open MPI over TCP)";
    match cluster_unavailable() {
        None => times.push((
            "the emulated two-host cluster",
            stage(
                cluster,
                mpi_tests().args(["an_emulated_two_host_cluster", "--", "--ignored"]),
            )?,
        )),
        Some(why) => {
            eprintln!("== skipped: {cluster}: {why}");
            skipped.push(format!("{cluster}: {why}"));
        }
    }
    let nvrtc = nvrtc_dir();
    let lib = nvrtc.join("nvidia/cu13/lib");
    if !lib.is_dir() {
        stage(
            "fetching NVIDIA's NVRTC 13 wheel (pip)",
            Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--no-deps",
                    "--target",
                ])
                .arg(&nvrtc)
                .arg("nvidia-cuda-nvrtc>=13,<14"),
        )?;
    }
    let library_path = match std::env::var_os("LD_LIBRARY_PATH") {
        Some(old) => {
            let mut paths = vec![lib.clone()];
            paths.extend(std::env::split_paths(&old));
            std::env::join_paths(paths)?
        }
        None => lib.clone().into_os_string(),
    };
    times.push((
        "the CUDA kernels compile (NVRTC 13)",
        stage(
            "the CUDA kernels compile with NVRTC 13 (no GPU needed)",
            cargo()
                .args(["test", "-p", "vgg-cuda", "--lib"])
                .args(locked)
                .args(["the_kernels_compile", "--", "--ignored"])
                .env("LD_LIBRARY_PATH", library_path),
        )?,
    ));
    if skipped.is_empty() {
        eprintln!("== every stage passed:");
    } else {
        eprintln!("== every stage that could run here passed:");
    }
    for (name, seconds) in &times {
        eprintln!("   {seconds:>6.0} s  {name}");
    }
    eprintln!("   {:>6.0} s  in all", start.elapsed().as_secs_f64());
    for what in &skipped {
        eprintln!("   skipped: {what}");
    }
    Ok(())
}
