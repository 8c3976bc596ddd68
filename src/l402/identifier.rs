//! The L402 token identifier, version 0: `u16 BE version || payment_hash (32) || token_id (32)`.

pub const IDENTIFIER_LEN: usize = 66;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identifier {
    pub payment_hash: [u8; 32],
    pub token_id: [u8; 32],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifierError {
    WrongLength(usize),
    UnknownVersion(u16),
}

impl Identifier {
    pub fn encode(&self) -> [u8; IDENTIFIER_LEN] {
        let mut out = [0u8; IDENTIFIER_LEN];
        let (_version, rest) = out.split_at_mut(2);
        let (hash, id) = rest.split_at_mut(32);
        hash.copy_from_slice(&self.payment_hash);
        id.copy_from_slice(&self.token_id);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Identifier, IdentifierError> {
        let Some((version, rest)) = bytes.split_first_chunk::<2>() else {
            return Err(IdentifierError::WrongLength(bytes.len()));
        };
        let version = u16::from_be_bytes(*version);
        if version != 0 {
            return Err(IdentifierError::UnknownVersion(version));
        }
        let Some((payment_hash, token_id)) = rest.split_first_chunk::<32>() else {
            return Err(IdentifierError::WrongLength(bytes.len()));
        };
        let token_id: [u8; 32] = (*token_id).try_into().map_err(|_| IdentifierError::WrongLength(bytes.len()))?;
        Ok(Identifier { payment_hash: *payment_hash, token_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_other_versions_and_lengths() {
        let id = Identifier { payment_hash: [7; 32], token_id: [9; 32] };
        let bytes = id.encode();
        assert_eq!(&bytes[..2], &[0, 0]);
        assert_eq!(Identifier::decode(&bytes), Ok(id));
        let mut v1 = bytes;
        v1[1] = 1;
        assert_eq!(Identifier::decode(&v1), Err(IdentifierError::UnknownVersion(1)));
        assert_eq!(Identifier::decode(&bytes[..65]), Err(IdentifierError::WrongLength(65)));
        let long = [&bytes[..], &[0]].concat();
        assert_eq!(Identifier::decode(&long), Err(IdentifierError::WrongLength(67)));
        assert_eq!(Identifier::decode(&[]), Err(IdentifierError::WrongLength(0)));
    }
}
