//! The `data-export` binary: a thin shell over the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    keep_large_buffers_out_of_the_heap();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(run())
}

async fn run() -> std::process::ExitCode {
    data_export::telemetry::init();
    let cli = data_export::cli::Cli::parse();
    let result = match data_export::config::Config::from_env() {
        Ok(config) => data_export::cli::run(cli, config).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Fixes glibc's mmap threshold. By default glibc raises it to the size of each large
/// block freed (up to 32 MiB), after which the export's 8 MiB parts came from the
/// heap, were freed on other threads, and left the heap fragmented: peak RSS grew
/// with the org's size (36 MiB at 1 M rows, 56 MiB at 3.8 M). Fixed at 512 KiB, the
/// parts are mapped and unmapped, the pipeline's batches and chunks (256 KiB and
/// some slack, so they never grow past it) still reuse heap memory, and the peak
/// stays flat (docs/benchmarks.md, "Memory"). An operator's own setting
/// (`MALLOC_MMAP_THRESHOLD_`, or `mmap_threshold` in `GLIBC_TUNABLES`) is left alone.
fn keep_large_buffers_out_of_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() || tunables.contains("mmap_threshold") {
            return;
        }
        // Allocations of at least this size get pages of their own from the kernel,
        // which go back when freed.
        const MMAP_THRESHOLD: i32 = 512 * 1024;
        // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}
