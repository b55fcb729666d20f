//! Logins to Vault with a cloud instance's own identity, so no Vault secret is handed to
//! the machine: Vault's AWS auth method (`iam`: a `sts:GetCallerIdentity` request signed
//! with the instance role's credentials from IMDSv2, which Vault replays to AWS) and its
//! GCP auth method (`gce`: an identity token the metadata server signs for the instance's
//! service account).

use std::time::Duration;

use base64::Engine;
use ring::{digest, hmac};

use super::VaultError;

/// The request Vault's AWS auth method replays to STS.
pub const STS_URL: &str = "https://sts.amazonaws.com/";
pub const STS_BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";

/// Temporary credentials of an instance role.
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub token: String,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

fn hmac_sha256(key: &[u8], data: &str) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
        .as_ref()
        .to_vec()
}

/// AWS Signature Version 4 of a request without query string: the `Authorization` value.
/// `headers` are (lower-case name, value), all of them signed; `amz_date` is
/// `YYYYMMDDTHHMMSSZ`.
#[allow(clippy::too_many_arguments)] // SigV4's inputs, each a plain string.
pub fn sigv4_authorization(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    amz_date: &str,
    region: &str,
    service: &str,
    access_key_id: &str,
    secret_access_key: &str,
) -> String {
    let mut sorted: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    sorted.sort();
    let canonical_headers: String = sorted.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed: Vec<&str> = sorted.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let canonical_request = format!(
        "{method}\n{path}\n\n{canonical_headers}\n{signed}\n{}",
        hex_sha256(body.as_bytes())
    );
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex_sha256(canonical_request.as_bytes())
    );
    let k_date = hmac_sha256(format!("AWS4{secret_access_key}").as_bytes(), date);
    let k_region = hmac_sha256(&k_date, region);
    let k_service = hmac_sha256(&k_region, service);
    let k_signing = hmac_sha256(&k_service, "aws4_request");
    let signature = hex::encode(hmac_sha256(&k_signing, &to_sign));
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key_id}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
}

/// The body of `POST auth/<mount>/login` for Vault's AWS auth method (iam), signed at
/// `amz_date` with `creds`.
pub fn aws_login_body(role: &str, creds: &AwsCredentials, amz_date: &str) -> serde_json::Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let content_type = "application/x-www-form-urlencoded; charset=utf-8";
    let host = "sts.amazonaws.com";
    let headers = [
        ("content-type", content_type),
        ("host", host),
        ("x-amz-date", amz_date),
        ("x-amz-security-token", creds.token.as_str()),
    ];
    let authorization = sigv4_authorization(
        "POST",
        "/",
        &headers,
        STS_BODY,
        amz_date,
        "us-east-1",
        "sts",
        &creds.access_key_id,
        &creds.secret_access_key,
    );
    let header_map = serde_json::json!({
        "Content-Type": [content_type],
        "Host": [host],
        "X-Amz-Date": [amz_date],
        "X-Amz-Security-Token": [creds.token],
        "Authorization": [authorization],
    });
    serde_json::json!({
        "role": role,
        "iam_http_request_method": "POST",
        "iam_request_url": b64(STS_URL),
        "iam_request_body": b64(STS_BODY),
        "iam_request_headers": b64(&header_map.to_string()),
    })
}

fn metadata_error(what: &str, base: &str, e: impl std::fmt::Display) -> VaultError {
    VaultError::Config(format!(
        "{what} from the instance metadata service at {base}: {e}; the agent must run on the cloud instance whose identity Vault trusts (auth \"aws\" on EC2 with an instance profile, \"gcp\" on GCE with a service account)"
    ))
}

async fn get_text(
    what: &str,
    base: &str,
    request: reqwest::RequestBuilder,
) -> Result<String, VaultError> {
    let response = request
        .send()
        .await
        .map_err(|e| metadata_error(what, base, e))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| metadata_error(what, base, e))?;
    if !status.is_success() {
        return Err(metadata_error(what, base, format!("HTTP {status}")));
    }
    Ok(text)
}

/// The instance role's credentials from IMDSv2 at `imds` (`http://169.254.169.254`).
pub async fn aws_credentials(
    http: &reqwest::Client,
    imds: &str,
) -> Result<AwsCredentials, VaultError> {
    let token = get_text(
        "an IMDSv2 session token",
        imds,
        http.put(format!("{imds}/latest/api/token"))
            .header("X-aws-ec2-metadata-token-ttl-seconds", "60"),
    )
    .await?;
    let base = format!("{imds}/latest/meta-data/iam/security-credentials/");
    let roles = get_text(
        "the instance profile's role",
        imds,
        http.get(&base).header("X-aws-ec2-metadata-token", &token),
    )
    .await?;
    let role = roles.lines().next().unwrap_or_default().trim().to_string();
    if role.is_empty() {
        return Err(metadata_error(
            "the instance profile's role",
            imds,
            "none (attach an instance profile)",
        ));
    }
    let json = get_text(
        "the instance role's credentials",
        imds,
        http.get(format!("{base}{role}"))
            .header("X-aws-ec2-metadata-token", &token),
    )
    .await?;
    let v: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| metadata_error("credentials", imds, e))?;
    let field = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .map(str::to_string)
            .ok_or_else(|| metadata_error("credentials", imds, format!("no {k}")))
    };
    Ok(AwsCredentials {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: field("SecretAccessKey")?,
        token: field("Token")?,
    })
}

/// The GCE identity token for Vault's GCP auth role `role`, from the metadata server at
/// `metadata` (`http://metadata.google.internal`).
pub async fn gce_identity_token(
    http: &reqwest::Client,
    metadata: &str,
    role: &str,
) -> Result<String, VaultError> {
    let url = url::Url::parse_with_params(
        &format!("{metadata}/computeMetadata/v1/instance/service-accounts/default/identity"),
        &[
            ("audience", format!("http://vault/{role}").as_str()),
            ("format", "full"),
        ],
    )
    .map_err(|e| metadata_error("an identity token", metadata, e))?;
    let jwt = get_text(
        "an identity token",
        metadata,
        http.get(url).header("Metadata-Flavor", "Google"),
    )
    .await?;
    Ok(jwt.trim().to_string())
}

/// A plain-HTTP client for the link-local metadata services.
pub fn metadata_client() -> Result<reqwest::Client, VaultError> {
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| VaultError::Config(e.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .map_err(|e| VaultError::Config(format!("metadata HTTP client: {e}")))
}

/// Now as `YYYYMMDDTHHMMSSZ`.
pub fn amz_date_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published Signature Version 4 example ("get-vanilla" of the SigV4 test suite).
    #[test]
    fn sigv4_matches_the_published_example() {
        let auth = sigv4_authorization(
            "GET",
            "/",
            &[
                ("Host", "example.amazonaws.com"),
                ("X-Amz-Date", "20150830T123600Z"),
            ],
            "",
            "20150830T123600Z",
            "us-east-1",
            "service",
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn the_aws_login_carries_a_signed_sts_request_and_no_secret_key() {
        let creds = AwsCredentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: "very-secret".into(),
            token: "session-token".into(),
        };
        let body = aws_login_body("strait-gateway-aws-use1", &creds, "20261203T010203Z");
        let text = body.to_string();
        assert!(!text.contains("very-secret"), "{text}");
        let decode = |k: &str| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(body[k].as_str().unwrap())
                    .unwrap(),
            )
            .unwrap()
        };
        assert_eq!(decode("iam_request_url"), STS_URL);
        assert_eq!(decode("iam_request_body"), STS_BODY);
        let headers: serde_json::Value =
            serde_json::from_str(&decode("iam_request_headers")).unwrap();
        let auth = headers["Authorization"][0].as_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE/20261203/us-east-1/sts/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature="),
            "{auth}"
        );
        assert_eq!(body["role"], "strait-gateway-aws-use1");
    }
}
