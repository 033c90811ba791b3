//! Reads bench/instructions.sh's 1 KiB JSON POST body with the WAF's JSON reader, many
//! times, for callgrind: `valgrind --tool=callgrind target/release/examples/json_read BODY`.
use pinpoint_policy::filters::waf::json::{read, JsonPath, JsonVisitor};

struct Count(usize);
impl JsonVisitor for Count {
    fn key(&mut self, _: &JsonPath<'_, '_>, _: &str) {
        self.0 += 1;
    }
    fn string(&mut self, _: &JsonPath<'_, '_>, _: &str) {
        self.0 += 1;
    }
}

fn main() {
    let path = std::env::args().nth(1).expect("a body file");
    let body = std::fs::read(path).expect("readable");
    let mut count = Count(0);
    for _ in 0..10_000 {
        read(std::hint::black_box(&body), 32, 10_000, &mut count).expect("JSON");
    }
    println!("{} non-word strings", count.0);
}
