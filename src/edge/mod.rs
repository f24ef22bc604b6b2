//! The appliance: configuration, the daemon loop and its folder watch, the SQLite ledger and
//! outbox, the exam rule, the messages and their MQTT publisher, health, systemd integration
//! and logging; the DICOM receiver, SCU and the Mammography CAD SR with its delivery.

pub mod config;
pub mod daemon;
pub mod dicom_scp;
pub mod dicom_scu;
pub mod drift;
pub mod exam;
pub mod health;
pub mod logging;
pub mod message;
pub mod publish;
pub mod service;
pub mod sr;
pub mod sr_delivery;
pub mod store;
pub mod tls;
pub mod watch;
