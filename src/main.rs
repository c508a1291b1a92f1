fn main() {
    std::process::exit(stratafs::cli::main());
}
