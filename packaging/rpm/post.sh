# fhir-bridge .rpm %post: the config's and the state's owners and modes; systemd
# learns the unit, which is never enabled or started here.
# A path that is gone or is a symlink is left alone: root never chowns through a link.
own() {
    if [ -L "$4" ]; then
        echo "fhir-bridge: $4 is a symlink; its owner and mode are left to the admin" >&2
    elif [ -e "$4" ]; then
        chown "$2:$3" "$4"
        chmod "$1" "$4"
    fi
}
mkdir -p /etc/fhir-bridge/credentials /var/lib/fhir-bridge
own 0750 root fhir-bridge /etc/fhir-bridge
own 0750 root fhir-bridge /etc/fhir-bridge/credentials
own 0640 root fhir-bridge /etc/fhir-bridge/bridges.toml
own 0700 fhir-bridge fhir-bridge /var/lib/fhir-bridge
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
