"""Operations: the local stack without Docker, the embedded Prefect server, process groups, and traffic
(the simulated users and the wrk load generator)."""
