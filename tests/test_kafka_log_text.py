"""The kafka-python log text that `clients._Errors` reads to explain a failed connection, checked without a broker (the SASL
half, a refused login, is test_security.py::test_kafka_python_still_logs_what_stream_reads against the real SASL broker)."""

from kafka.errors import SaslAuthenticationFailedError
from sales_prediction_kafka.broker import free_port
from helpers import kafka_warnings


def test_absent_broker_is_logged_as_refused():
    "A closed port: kafka-python logs ECONNREFUSED and ends with 'Bootstrap failed', which _Errors must not take for a dropped login."
    absent = kafka_warnings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    assert any("refused" in m.lower() for m in absent.seen), absent.seen
    assert absent.seen[-1].startswith("Bootstrap failed"), absent.seen[-1:]
    assert not absent.closed_by_broker() and "Authentication" not in absent.why("nothing logged"), (
        absent.seen
    )


def test_sasl_failure_names_authentication():
    "kafka-python's error for a refused SASL login carries 'Authentication' in its text, the word _Errors looks for."
    assert "Authentication" in str(SaslAuthenticationFailedError("Invalid username or password"))
