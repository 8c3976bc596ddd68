//! The proxy-wasm glue: the only module that talks to the host. It reads the few request headers
//! the gate needs, dispatches the invoice callout and sends the gate's responses; every decision is
//! made by the pure modules.

mod access_log;
mod admission;
mod browser;
mod challenge;
mod discovery;
mod dry_run;
mod host;
mod http;
mod metering;
mod root;
mod settlements;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> { Box::new(root::Root::default()) });
}}
