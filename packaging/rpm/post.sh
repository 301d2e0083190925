# fhir-bridge .rpm %post: the config's and the state's owners and modes; systemd
# learns the unit, which is never enabled or started here.
mkdir -p /etc/fhir-bridge/credentials /var/lib/fhir-bridge
chown root:fhir-bridge /etc/fhir-bridge /etc/fhir-bridge/credentials /etc/fhir-bridge/bridges.toml
chmod 0750 /etc/fhir-bridge /etc/fhir-bridge/credentials
chmod 0640 /etc/fhir-bridge/bridges.toml
chown fhir-bridge:fhir-bridge /var/lib/fhir-bridge
chmod 0700 /var/lib/fhir-bridge
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
