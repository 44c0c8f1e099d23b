//! The instance supervisor as a program of its own, for users of the library that are not the
//! `scfsim` binary (which is its own supervisor): the pool's tests, for one.

fn main() {
    scfsim_pool::run_supervisor_if_requested();
    eprintln!(
        "scfsim-supervisor: this program is started by scfsim for each function instance \
         (first argument {})",
        scfsim_pool::SUPERVISOR_ARG
    );
    std::process::exit(2);
}
