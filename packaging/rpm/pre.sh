# fhir-bridge .rpm %pre: the system user and group, before the files that name them.
if ! getent passwd fhir-bridge >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/fhir-bridge --no-create-home \
        --shell /usr/sbin/nologin --comment "fhir-bridge daemon" fhir-bridge
fi
exit 0
