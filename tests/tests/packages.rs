//! The Debian packages of `ca-server` and `device-client` (`cargo deb`; files in
//! ca-server/debian/ and device-client/debian/), built, installed into this machine with
//! `dpkg -i`, checked, run the way their systemd units run them, and removed with `dpkg -r`.
//!
//! The packages are made from the binaries this test suite builds anyway (`cargo deb
//! --no-build` with the suite's own profile), not from a release build: a release build of both
//! binaries takes minutes (fat LTO), and what is tested here is the packaging, the same for
//! either profile. Releases are `cargo deb -p ca-server` / `cargo deb -p device-client`.
//!
//! The test changes the system: it must run as root (CI does) and fails at once otherwise. It
//! refuses to touch a machine where these packages were installed by someone else, cleans up
//! what an earlier run left (marked by a file in each data directory), and purges the packages,
//! the data directories and the users it created when it ends, failed or not. Without systemd
//! as PID 1 the units are not started: the test runs each unit's `ExecStart` command line itself
//! as the unit's user with its capabilities (setpriv), on loopback ports.

use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use iiot_acme_tests::device_client::device_client_bin;
use iiot_acme_tests::process::{poll_until, run_ok, run_with_timeout, Daemon, RunOutput};
use iiot_acme_tests::{ca_server_bin, free_port, https, temp_dir};

/// The Debian package of `ca-server` and its pieces, as ca-server/Cargo.toml and
/// ca-server/debian/ define them.
const CA: Package = Package {
    crate_name: "ca-server",
    deb_name: "iiot-acme-ca-server",
    binary: "/usr/bin/ca-server",
    unit: "/usr/lib/systemd/system/iiot-acme-ca.service",
    config: "/etc/iiot-acme/ca-server.toml",
    user: "iiot-acme",
    data_dir: "/var/lib/iiot-acme",
};

/// The Debian package of `device-client`.
const DEVICE: Package = Package {
    crate_name: "device-client",
    deb_name: "iiot-acme-device-client",
    binary: "/usr/bin/device-client",
    unit: "/usr/lib/systemd/system/iiot-acme-device@.service",
    config: "/etc/iiot-acme/device/default.toml",
    user: "iiot-acme-device",
    data_dir: "/var/lib/iiot-acme-device",
};

/// The instance of the device unit that reads the packaged `default.toml`.
const DEVICE_INSTANCE: &str = "default";

/// Written into each data directory right after the install, so that a later run can tell
/// what an interrupted run left from an installation of somebody else's.
const MARKER: &str = ".created-by-iiot-acme-packages-test";

/// Limit for `cargo deb`, which only packs what is built (the build itself is
/// `ca_server_bin`'s).
const PACK_TIMEOUT: Duration = Duration::from_secs(300);
/// Limit for `dpkg -i` / `-r` / `--purge`, `systemd-analyze` and one-shot binaries.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

struct Package {
    crate_name: &'static str,
    deb_name: &'static str,
    binary: &'static str,
    unit: &'static str,
    config: &'static str,
    user: &'static str,
    data_dir: &'static str,
}

#[test]
fn packages_build_install_run_and_remove() -> Result<()> {
    let started = Instant::now();
    let euid = fs::metadata("/proc/self")
        .context("cannot read /proc/self")?
        .uid();
    ensure!(
        euid == 0,
        "this test installs Debian packages into the system with dpkg and must run as root (CI \
         does): sudo -E cargo test -p iiot-acme-tests --test packages"
    );
    let work = temp_dir("iiot-packages-")?;
    let logs = work.path();

    // The binaries first (a no-op when the suite built them), then the packages from them.
    let ca_bin = ca_server_bin()?;
    let dc_bin = device_client_bin()?;
    let profile_dir = ca_bin
        .parent()
        .context("ca-server binary has no directory")?;
    ensure!(
        dc_bin.parent() == Some(profile_dir),
        "ca-server ({}) and device-client ({}) must come from the same build",
        ca_bin.display(),
        dc_bin.display()
    );
    let debs = logs.join("debs");
    fs::create_dir(&debs).context("cannot create the output directory")?;
    let ca_deb = cargo_deb(&CA, profile_dir, &debs, logs)?;
    let dc_deb = cargo_deb(&DEVICE, profile_dir, &debs, logs)?;
    eprintln!(
        "packages: built {} and {} in {:?}",
        ca_deb.display(),
        dc_deb.display(),
        started.elapsed()
    );
    check_control(&ca_deb, &CA, logs)?;
    check_control(&dc_deb, &DEVICE, logs)?;

    let mut system = System::take_over(logs)?;
    dpkg(
        "dpkg-install",
        &["-i".as_ref(), ca_deb.as_os_str(), dc_deb.as_os_str()],
        logs,
    )?;
    system.mark_installed()?;

    let ca_unit = Unit::read(CA.unit)?;
    let dc_unit = Unit::read(DEVICE.unit)?;
    for (pkg, unit) in [(&CA, &ca_unit), (&DEVICE, &dc_unit)] {
        check_installed_files(pkg)?;
        check_unit(pkg, unit)?;
    }
    ensure!(
        dc_unit.values("UMask") == ["0022"],
        "device unit: UMask must keep certificates readable (0022): {:?}",
        dc_unit.values("UMask")
    );
    ensure!(
        ca_unit.values("UMask") == ["0077"],
        "CA unit: UMask must be 0077: {:?}",
        ca_unit.values("UMask")
    );
    ensure!(
        ca_unit.values("KillSignal").is_empty(),
        "CA unit: the server stops in order on systemd's default SIGTERM; no KillSignal: {:?}",
        ca_unit.values("KillSignal")
    );
    systemd_analyze_verify(logs)?;

    run_ca_like_its_unit(&ca_unit, logs)?;
    run_device_client_like_its_unit(&dc_unit, logs)?;

    // Installing again (what an upgrade runs: postinst with the old version) keeps the CA's
    // keys, and the owners and modes.
    let root = Path::new(CA.data_dir).join("ca/root.pem");
    let root_before = fs::read(&root).context("the CA wrote no root certificate")?;
    dpkg(
        "dpkg-reinstall",
        &["-i".as_ref(), ca_deb.as_os_str(), dc_deb.as_os_str()],
        logs,
    )?;
    ensure!(
        fs::read(&root).ok() == Some(root_before),
        "installing again changed the CA's root certificate"
    );
    for pkg in [&CA, &DEVICE] {
        check_installed_files(pkg)?;
    }

    // Removal: programs and units go, configuration and data stay.
    dpkg(
        "dpkg-remove",
        &[
            "-r".as_ref(),
            CA.deb_name.as_ref(),
            DEVICE.deb_name.as_ref(),
        ],
        logs,
    )?;
    for pkg in [&CA, &DEVICE] {
        for gone in [pkg.binary, pkg.unit] {
            ensure!(
                !Path::new(gone).exists(),
                "{gone} is still there after dpkg -r {}",
                pkg.deb_name
            );
        }
        ensure!(
            Path::new(pkg.config).is_file(),
            "dpkg -r removed the configuration {} (only purge may)",
            pkg.config
        );
        let meta = fs::metadata(pkg.data_dir)
            .with_context(|| format!("dpkg -r removed the data directory {}", pkg.data_dir))?;
        ensure!(
            meta.uid() == user(pkg.user)?.uid,
            "{} lost its owner",
            pkg.data_dir
        );
        ensure!(
            dpkg_status(pkg.deb_name)? == "deinstall ok config-files",
            "after dpkg -r, {} is {:?}",
            pkg.deb_name,
            dpkg_status(pkg.deb_name)?
        );
    }
    ensure!(
        Path::new(CA.data_dir).join("ca/root.pem").is_file(),
        "dpkg -r removed the CA's keys and certificates"
    );

    // Purge: the configuration goes too; the CA's keys and the device's state stay (postrm).
    dpkg("dpkg-purge", &PURGE.map(AsRef::as_ref), logs)?;
    for pkg in [&CA, &DEVICE] {
        ensure!(
            !Path::new(pkg.config).exists(),
            "{} is still there after dpkg --purge",
            pkg.config
        );
        ensure!(
            Path::new(pkg.data_dir).is_dir(),
            "dpkg --purge removed {}: it must keep it",
            pkg.data_dir
        );
    }
    ensure!(
        Path::new(CA.data_dir).join("ca/root.pem").is_file(),
        "dpkg --purge removed the CA's keys and certificates"
    );

    system.clean_up()?;
    eprintln!("packages: done in {:?}", started.elapsed());
    Ok(())
}

/// `dpkg --purge` of both packages.
const PURGE: [&str; 3] = ["--purge", CA.deb_name, DEVICE.deb_name];

/// Runs `dpkg ARGS` without questions; errors, quoting its output, unless it succeeds.
fn dpkg(name: &str, args: &[&std::ffi::OsStr], logs: &Path) -> Result<RunOutput> {
    let mut cmd = Command::new("dpkg");
    cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
    run_ok(name, &mut cmd, logs, TOOL_TIMEOUT)
}

/// `cargo deb -p CRATE --no-build` from the binaries in `profile_dir` (`<target>/<profile>`);
/// the path of the `.deb` it wrote into `out`.
fn cargo_deb(pkg: &Package, profile_dir: &Path, out: &Path, logs: &Path) -> Result<PathBuf> {
    let target_dir = profile_dir
        .parent()
        .context("the profile directory has no parent")?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => bail!("cannot tell the profile of {}", profile_dir.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    iiot_acme_tests::cargo::remove_crate_env(&mut cmd);
    cmd.current_dir(iiot_acme_tests::cargo::workspace_dir()?)
        .env("CARGO_TARGET_DIR", target_dir)
        .args([
            "deb",
            "-p",
            pkg.crate_name,
            "--no-build",
            "--profile",
            profile,
        ])
        // Stripped, and lightly compressed: this package is installed once and thrown away.
        .args(["--strip", "--fast", "--output"])
        .arg(out);
    let name = format!("cargo-deb-{}", pkg.crate_name);
    let run = run_with_timeout(&name, &mut cmd, logs, PACK_TIMEOUT)?;
    ensure!(
        run.status.success(),
        "`cargo deb` failed ({}); is cargo-deb installed? (scripts/install-test-deps.sh)\n{}",
        run.status,
        run.tails()
    );
    let deb = fs::read_dir(out)
        .context("cannot list the packages")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&format!("{}_", pkg.deb_name)) && n.ends_with(".deb")
            })
        });
    deb.with_context(|| format!("cargo deb wrote no {}_*.deb\n{}", pkg.deb_name, run.tails()))
}

/// The control fields and conffiles of a built package.
fn check_control(deb: &Path, pkg: &Package, logs: &Path) -> Result<()> {
    let field = |name: &str| -> Result<String> {
        let mut cmd = Command::new("dpkg-deb");
        cmd.arg("--field").arg(deb).arg(name);
        let run = run_ok("dpkg-deb-field", &mut cmd, logs, TOOL_TIMEOUT)?;
        Ok(run.stdout.trim().to_owned())
    };
    ensure!(
        field("Package")? == pkg.deb_name,
        "{}: wrong Package",
        deb.display()
    );
    let depends = field("Depends")?;
    for needed in ["libc6", "adduser"] {
        ensure!(
            depends.split(',').any(|d| d.trim().starts_with(needed)),
            "{}: Depends lacks {needed}: {depends}",
            deb.display()
        );
    }
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("--info").arg(deb).arg("conffiles");
    let conffiles = run_ok("dpkg-deb-conffiles", &mut cmd, logs, TOOL_TIMEOUT)?.stdout;
    ensure!(
        conffiles.lines().any(|l| l.trim() == pkg.config),
        "{}: {} is not a conffile: {conffiles:?}",
        deb.display(),
        pkg.config
    );
    Ok(())
}

/// Owners and modes of what the package installed, its user and its data directory.
fn check_installed_files(pkg: &Package) -> Result<()> {
    for (path, mode) in [(pkg.binary, 0o755), (pkg.unit, 0o644), (pkg.config, 0o644)] {
        let meta = fs::metadata(path).with_context(|| format!("{path} was not installed"))?;
        ensure!(
            meta.uid() == 0 && meta.gid() == 0,
            "{path} is owned by {}:{}, not root",
            meta.uid(),
            meta.gid()
        );
        ensure!(
            meta.permissions().mode() & 0o7777 == mode,
            "{path} has mode {:o}, not {mode:o}",
            meta.permissions().mode() & 0o7777
        );
    }
    let u = user(pkg.user)?;
    ensure!(
        u.uid > 0 && u.uid < 1000,
        "{} is not a system user: uid {}",
        pkg.user,
        u.uid
    );
    ensure!(
        u.home == pkg.data_dir,
        "{}'s home is {}, not {}",
        pkg.user,
        u.home,
        pkg.data_dir
    );
    ensure!(
        u.shell.ends_with("nologin") || u.shell == "/bin/false",
        "{} has a login shell: {}",
        pkg.user,
        u.shell
    );
    let meta =
        fs::metadata(pkg.data_dir).with_context(|| format!("{} was not made", pkg.data_dir))?;
    ensure!(meta.is_dir(), "{} is not a directory", pkg.data_dir);
    ensure!(
        (meta.uid(), meta.gid()) == (u.uid, u.gid),
        "{} is owned by {}:{}, not {}",
        pkg.data_dir,
        meta.uid(),
        meta.gid(),
        pkg.user
    );
    ensure!(
        meta.permissions().mode() & 0o7777 == 0o700,
        "{} has mode {:o}, not 700",
        pkg.data_dir,
        meta.permissions().mode() & 0o7777
    );
    Ok(())
}

/// The hardening every unit must have, and a user and a writable path that match the package.
fn check_unit(pkg: &Package, unit: &Unit) -> Result<()> {
    let expect = |key: &str, want: &[&str]| -> Result<()> {
        let got = unit.values(key);
        ensure!(got == want, "{}: {key}= is {got:?}, not {want:?}", pkg.unit);
        Ok(())
    };
    expect("User", &[pkg.user])?;
    expect("Group", &[pkg.user])?;
    expect("ProtectSystem", &["strict"])?;
    expect("ProtectHome", &["yes"])?;
    expect("PrivateTmp", &["yes"])?;
    expect("NoNewPrivileges", &["yes"])?;
    expect("ReadWritePaths", &[pkg.data_dir])?;
    expect("CapabilityBoundingSet", &["CAP_NET_BIND_SERVICE"])?;
    expect("AmbientCapabilities", &["CAP_NET_BIND_SERVICE"])?;
    expect("MemoryDenyWriteExecute", &["yes"])?;
    expect("SystemCallFilter", &["@system-service"])?;
    expect("Type", &["exec"])?;
    let exec = unit.exec_start()?;
    ensure!(
        exec.first().map(String::as_str) == Some(pkg.binary),
        "{}: ExecStart runs {exec:?}, not {}",
        pkg.unit,
        pkg.binary
    );
    Ok(())
}

/// `systemd-analyze verify` of both units (the template through an instance of it), where the
/// tool exists; it needs no running systemd.
fn systemd_analyze_verify(logs: &Path) -> Result<()> {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("packages: systemd-analyze is not installed: the units are not verified");
        return Ok(());
    }
    let instance = DEVICE
        .unit
        .replace("@.service", &format!("@{DEVICE_INSTANCE}.service"));
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["verify", CA.unit, &instance]);
    let run = run_with_timeout("systemd-analyze-verify", &mut cmd, logs, TOOL_TIMEOUT)?;
    // verify prints nothing for a clean unit; any warning about ours is a defect.
    let complaints: Vec<&str> = run
        .stderr
        .lines()
        .chain(run.stdout.lines())
        .filter(|l| l.contains("iiot-acme"))
        .collect();
    ensure!(
        run.status.success() && complaints.is_empty(),
        "systemd-analyze verify ({}):\n{}",
        run.status,
        run.tails()
    );
    Ok(())
}

/// Runs the CA's `ExecStart` as its user with its capabilities and umask on a copy of the
/// packaged configuration whose listeners are moved to loopback test ports (the ACME one to a
/// privileged port, which only the unit's capability lets the user bind); checks that it serves
/// its directory over HTTPS from the packaged data directory, that an operator command works as
/// the CA's user, and that SIGTERM (systemd's stop) stops it cleanly.
fn run_ca_like_its_unit(unit: &Unit, logs: &Path) -> Result<()> {
    let mut exec = unit.exec_start()?;
    let config_at = exec
        .iter()
        .position(|a| a == CA.config)
        .with_context(|| format!("the CA's ExecStart does not read {}: {exec:?}", CA.config))?;

    let packaged: toml::Table = fs::read_to_string(CA.config)
        .context("cannot read the packaged CA configuration")?
        .parse()
        .context("the packaged CA configuration is not TOML")?;
    ensure!(
        packaged.get("data_dir").and_then(toml::Value::as_str) == Some(CA.data_dir),
        "the packaged configuration's data_dir is not the unit's ReadWritePaths {}",
        CA.data_dir
    );
    let acme_port = free_privileged_port()?;
    let mut config = packaged.clone();
    config.insert("listen".into(), format!("127.0.0.1:{acme_port}").into());
    for section in ["admin", "metrics"] {
        let table = config
            .get_mut(section)
            .and_then(toml::Value::as_table_mut)
            .with_context(|| format!("the packaged configuration has no [{section}]"))?;
        table.insert(
            "listen".into(),
            format!("127.0.0.1:{}", free_port()?).into(),
        );
    }
    // Readable by the CA's user, as /etc/iiot-acme is.
    let config_dir = logs.join("etc");
    fs::create_dir(&config_dir)?;
    fs::set_permissions(logs, fs::Permissions::from_mode(0o755))?;
    fs::set_permissions(&config_dir, fs::Permissions::from_mode(0o755))?;
    let config_path = config_dir.join("ca-server.toml");
    fs::write(&config_path, toml::to_string(&config)?)?;
    fs::set_permissions(&config_path, fs::Permissions::from_mode(0o644))?;
    exec[config_at] = config_path.display().to_string();

    let mut cmd = as_unit_user(unit, &exec)?;
    let mut ca = Daemon::spawn("ca-server", &mut cmd, logs)?;
    let root = Path::new(CA.data_dir).join("ca/root.pem");
    let url = format!("https://127.0.0.1:{acme_port}/directory");
    let directory = ca.wait_ready(Duration::from_secs(60), |why| {
        if !root.is_file() {
            *why = format!("{} does not exist yet", root.display());
            return Ok(None);
        }
        match https::get(&url, &root) {
            Ok((200, body)) => Ok(Some(body)),
            Ok((status, body)) => {
                *why = format!("GET {url}: {status} {body}");
                Ok(None)
            }
            Err(e) => {
                *why = format!("{e:#}");
                Ok(None)
            }
        }
    })?;
    let directory: serde_json::Value =
        serde_json::from_str(&directory).context("the directory is not JSON")?;
    ensure!(
        directory["newNonce"].is_string() && directory["newOrder"].is_string(),
        "not an ACME directory: {directory}"
    );
    ensure!(
        directory["meta"]["externalAccountRequired"] == true,
        "the packaged configuration requires EAB, the directory does not say so: {directory}"
    );

    // What the CA made is its user's, and private.
    let ca_user = user(CA.user)?;
    for made in ["ca", "ca/root.pem", "db", "admin.sock"] {
        let path = Path::new(CA.data_dir).join(made);
        let meta = fs::symlink_metadata(&path).with_context(|| format!("the CA made no {made}"))?;
        ensure!(
            meta.uid() == ca_user.uid,
            "{} is owned by uid {}, not {}",
            path.display(),
            meta.uid(),
            CA.user
        );
        ensure!(
            meta.permissions().mode() & 0o077 == 0,
            "{} is open to others: mode {:o}",
            path.display(),
            meta.permissions().mode() & 0o7777
        );
    }

    // The operator's way, as docs/operating.md tells it: commands as the CA's user.
    let mut eab = Command::new("runuser");
    eab.args([
        "-u",
        CA.user,
        "--",
        CA.binary,
        "eab",
        "create",
        "--json",
        "--data-dir",
    ])
    .arg(CA.data_dir);
    let created = run_ok("eab-create", &mut eab, logs, TOOL_TIMEOUT)?;
    let created: serde_json::Value =
        serde_json::from_str(created.stdout.trim()).context("eab create --json")?;
    ensure!(
        created["kid"].is_string(),
        "eab create printed no key id: {created}"
    );

    // systemd stops the CA with SIGTERM: it must exit, successfully, well within
    // TimeoutStopSec.
    let pid = ca.pid().context("the CA is not running")?;
    let mut kill = Command::new("kill");
    kill.args(["-TERM", &pid.to_string()]);
    run_ok("kill-term", &mut kill, logs, TOOL_TIMEOUT)?;
    let exited = poll_until(
        "ca-server to stop on SIGTERM",
        Duration::from_secs(20),
        Duration::from_millis(50),
        |why| match ca.check_running() {
            Ok(()) => {
                *why = "still running".into();
                Ok(None)
            }
            Err(e) => Ok(Some(format!("{e:#}"))),
        },
    )?;
    ensure!(
        exited.contains("exit status: 0"),
        "ca-server did not stop cleanly on SIGTERM: {exited}"
    );
    Ok(())
}

/// Runs the device unit's `ExecStart` for the packaged `default` instance, with `show` in place
/// of `run` (`run` would wait for the example CA forever), and `--help`, as the unit's user.
fn run_device_client_like_its_unit(unit: &Unit, logs: &Path) -> Result<()> {
    let exec: Vec<String> = unit
        .exec_start()?
        .into_iter()
        .map(|a| a.replace("%i", DEVICE_INSTANCE))
        .collect();
    let config = format!("/etc/iiot-acme/device/{DEVICE_INSTANCE}.toml");
    ensure!(
        exec.contains(&config) && exec.get(1).map(String::as_str) == Some("run"),
        "the device unit's ExecStart is not `device-client run --config {config}`: {exec:?}"
    );
    let state_dir = format!("{}/{DEVICE_INSTANCE}", DEVICE.data_dir);
    ensure!(
        exec.contains(&state_dir),
        "the device unit does not keep instance state in {state_dir}: {exec:?}"
    );

    let help = [DEVICE.binary.to_owned(), "--help".to_owned()];
    let out = run_as_unit_user(unit, &help, "device-client-help", logs)?;
    ensure!(
        out.status.success() && out.stdout.contains("run"),
        "device-client --help as {}: {}\n{}",
        DEVICE.user,
        out.status,
        out.tails()
    );

    // Nothing is enrolled yet: show reads the packaged configuration, finds no certificate in
    // the instance's state directory and says so with its own exit code (10).
    let mut show = exec.clone();
    show[1] = "show".into();
    let out = run_as_unit_user(unit, &show, "device-client-show", logs)?;
    let cert = format!("{state_dir}/cert.pem");
    ensure!(
        out.status.code() == Some(10)
            && out.stdout.contains(&cert)
            && out
                .stdout
                .lines()
                .any(|l| l.starts_with("status") && l.ends_with("missing")),
        "{show:?} as {}: {}, expected exit code 10 and a missing {cert}\n{}",
        DEVICE.user,
        out.status,
        out.tails()
    );
    Ok(())
}

/// `cmd` as the unit would start it: its user and group, only its ambient capabilities (and
/// the bounding set), no new privileges, its umask, a clean environment.
fn as_unit_user(unit: &Unit, exec: &[String]) -> Result<Command> {
    let user = unit
        .values("User")
        .first()
        .copied()
        .context("the unit has no User=")?;
    let caps: Vec<String> = unit
        .values("AmbientCapabilities")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let caps = format!("-all,{}", caps.join(","));
    let umask = unit.values("UMask").first().copied().unwrap_or("0022");
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        user,
        "--regid",
        user,
        "--init-groups",
        "--no-new-privs",
    ])
    .args([
        "--inh-caps",
        &caps,
        "--ambient-caps",
        &caps,
        "--bounding-set",
        &caps,
    ])
    .arg("--reset-env")
    .args([
        "--",
        "/bin/sh",
        "-c",
        &format!("umask {umask} && exec \"$@\""),
        "sh",
    ])
    .args(exec);
    Ok(cmd)
}

fn run_as_unit_user(unit: &Unit, exec: &[String], name: &str, logs: &Path) -> Result<RunOutput> {
    let mut cmd = as_unit_user(unit, exec)?;
    run_with_timeout(name, &mut cmd, logs, TOOL_TIMEOUT)
}

/// A free TCP port below 1024 on 127.0.0.1 (found as root, which may bind it): only a process
/// with CAP_NET_BIND_SERVICE can listen there. Tests use ephemeral ports, so none competes.
fn free_privileged_port() -> Result<u16> {
    let unprivileged_from: u16 =
        fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1024);
    ensure!(
        unprivileged_from > 600,
        "this machine lets anyone bind ports from {unprivileged_from}: the capability cannot \
         be tested"
    );
    (600..unprivileged_from.min(1024))
        .rev()
        .find(|&p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok())
        .context("no free port below 1024 on 127.0.0.1")
}

/// A systemd unit file's `Key=Value` lines, in order.
struct Unit {
    path: &'static str,
    entries: Vec<(String, String)>,
}

impl Unit {
    fn read(path: &'static str) -> Result<Self> {
        let text = fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
        let entries = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '[']))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Ok(Self { path, entries })
    }

    fn values(&self, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The one `ExecStart=` command line, split on spaces (ours quote nothing).
    fn exec_start(&self) -> Result<Vec<String>> {
        let [line] = self.values("ExecStart")[..] else {
            bail!("{} must have exactly one ExecStart=", self.path);
        };
        ensure!(
            !line.contains(['"', '\'', '\\']),
            "{}: ExecStart quotes or escapes, which this test does not parse: {line}",
            self.path
        );
        Ok(line.split_whitespace().map(str::to_owned).collect())
    }
}

/// A line of the user database.
struct User {
    uid: u32,
    gid: u32,
    home: String,
    shell: String,
}

fn user(name: &str) -> Result<User> {
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .context("cannot run getent")?;
    ensure!(out.status.success(), "there is no user {name}");
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let fields: Vec<&str> = line.split(':').collect();
    let [_, _, uid, gid, _, home, shell] = fields[..] else {
        bail!("getent passwd {name}: unexpected {line:?}");
    };
    Ok(User {
        uid: uid.parse().context("uid")?,
        gid: gid.parse().context("gid")?,
        home: home.to_owned(),
        shell: shell.to_owned(),
    })
}

fn user_exists(name: &str) -> bool {
    Command::new("getent")
        .args(["passwd", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `dpkg-query`'s status of a package, empty when dpkg knows nothing of it.
fn dpkg_status(deb_name: &str) -> Result<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", deb_name])
        .output()
        .context("cannot run dpkg-query")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The machine's state this test changes, restored when dropped: the packages purged, and the
/// data directories and users removed when this test (or an earlier run of it) made them.
struct System {
    logs: PathBuf,
    /// Users that did not exist before: removed at the end.
    new_users: Vec<&'static str>,
    cleaned: bool,
}

impl System {
    /// Checks that the packages are not installed by somebody else, and removes what an
    /// earlier, interrupted run of this test left.
    fn take_over(logs: &Path) -> Result<Self> {
        let mut leftover = false;
        for pkg in [&CA, &DEVICE] {
            let status = dpkg_status(pkg.deb_name)?;
            let dir = Path::new(pkg.data_dir);
            let ours = dir.join(MARKER).exists();
            let present = !(status.is_empty() || status.ends_with("not-installed")) || dir.exists();
            ensure!(
                !present || ours,
                "{} is on this machine (dpkg: {status:?}; {} exists: {}) and not from this \
                 test, which would replace it: test on another machine, or purge the package \
                 and remove {} first",
                pkg.deb_name,
                pkg.data_dir,
                dir.exists(),
                pkg.data_dir
            );
            leftover |= ours;
        }
        let mut system = Self {
            logs: logs.to_owned(),
            new_users: Vec::new(),
            cleaned: false,
        };
        if leftover {
            eprintln!("packages: removing what an earlier run of this test left");
            system.new_users = vec![CA.user, DEVICE.user];
            system.clean_up()?;
            system.cleaned = false;
        }
        system.new_users = [CA.user, DEVICE.user]
            .into_iter()
            .filter(|u| !user_exists(u))
            .collect();
        Ok(system)
    }

    /// Marks the data directories as this test's, right after the install.
    fn mark_installed(&mut self) -> Result<()> {
        for pkg in [&CA, &DEVICE] {
            let marker = Path::new(pkg.data_dir).join(MARKER);
            fs::write(&marker, b"")
                .with_context(|| format!("cannot write {}", marker.display()))?;
        }
        Ok(())
    }

    /// Purges the packages, removes the marked data directories and the users this test made.
    fn clean_up(&mut self) -> Result<()> {
        self.cleaned = true;
        let mut errors = Vec::new();
        if let Err(e) = dpkg("dpkg-purge-cleanup", &PURGE.map(AsRef::as_ref), &self.logs) {
            errors.push(format!("{e:#}"));
        }
        for pkg in [&CA, &DEVICE] {
            let dir = Path::new(pkg.data_dir);
            if dir.join(MARKER).exists() {
                if let Err(e) = fs::remove_dir_all(dir) {
                    errors.push(format!("cannot remove {}: {e}", dir.display()));
                }
            }
        }
        for name in &self.new_users {
            if !user_exists(name) {
                continue;
            }
            // adduser --group made a group of the same name: userdel removes it with the user
            // where login.defs says USERGROUPS_ENAB (Debian's default), groupdel otherwise.
            let mut del = Command::new("userdel");
            del.arg(name);
            if let Err(e) = run_ok("userdel", &mut del, &self.logs, TOOL_TIMEOUT) {
                errors.push(format!("{e:#}"));
            }
            let group_left = Command::new("getent")
                .args(["group", name])
                .output()
                .is_ok_and(|o| o.status.success());
            if group_left {
                let mut del = Command::new("groupdel");
                del.arg(name);
                if let Err(e) = run_ok("groupdel", &mut del, &self.logs, TOOL_TIMEOUT) {
                    errors.push(format!("{e:#}"));
                }
            }
        }
        let etc = Path::new("/etc/iiot-acme");
        if etc.is_dir() && fs::read_dir(etc).is_ok_and(|mut d| d.next().is_none()) {
            let _ = fs::remove_dir(etc);
        }
        ensure!(
            errors.is_empty(),
            "cleaning up failed:\n{}",
            errors.join("\n")
        );
        Ok(())
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if !self.cleaned {
            if let Err(e) = self.clean_up() {
                eprintln!("packages: {e:#}");
            }
        }
    }
}
