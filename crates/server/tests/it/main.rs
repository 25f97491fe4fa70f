//! Storage conformance: one story over `Database`, run on SQLite always and on PostgreSQL when
//! `UPKEEP_TEST_DATABASE_URL` is set. Every backend must pass it unchanged.

mod storage;
