fn main() {
    eprintln!("awqc: CLI under construction");
    std::process::exit(1);
}
