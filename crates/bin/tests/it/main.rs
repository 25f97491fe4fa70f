//! End-to-end tests: the real `upkeep-server`, `upkeep` and `upkeep-agent` binaries, talking
//! over real sockets, with a real SQLite file and — when `UPKEEP_TEST_DATABASE_URL` is set — a
//! real PostgreSQL database. Each scenario runs once per backend (`…::sqlite`, `…::postgres`).

mod api;
mod harness;

mod bad_input;
mod browser;
mod console;
mod deltas;
mod mirrors;
mod notifications;
mod offline;
mod pipeline;
mod publish_to_launch;
mod resume_and_tamper;
mod rollouts;
mod scale_out;
mod tidy;
mod tuf;
mod wire;

/// Declares `NAME::sqlite` and `NAME::postgres` tests that run `fn NAME(&World)`, optionally
/// with extra server flags.
#[macro_export]
macro_rules! on_each_backend {
    ($scenario:ident) => {
        $crate::on_each_backend!($scenario, []);
    };
    ($scenario:ident, [$($arg:expr),*]) => {
        mod $scenario {
            use upkeep_test_support::Backend;

            #[test]
            fn sqlite() {
                let world = $crate::harness::World::start(Backend::Sqlite, &[$($arg),*]).expect("SQLite is always available");
                super::$scenario(&world);
            }

            #[test]
            fn postgres() {
                match $crate::harness::World::start(Backend::Postgres, &[$($arg),*]) {
                    Some(world) => super::$scenario(&world),
                    None => eprintln!("PostgreSQL variant not run: set {} to run it", upkeep_test_support::DATABASE_URL_ENV),
                }
            }
        }
    };
}
