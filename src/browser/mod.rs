//! A person in a browser: the HTML 402 page with the invoice as a QR code, and the redemption of a
//! paid invoice into a cookie that then serves as the L402 credential. Pure: the filter reads the
//! headers and the form, and sends what these functions build.

pub mod accept;
pub mod cookie;
pub mod page;
pub mod qr;
pub mod redeem;
