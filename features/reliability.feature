@reliability
Feature: The administrator stays polite and loses nothing when its services fail
  When the language model is down the client gets a short apology and the turn is kept as a dead letter.
  WhatsApp's throughput limit is waited out and the reply is sent once; a client outside WhatsApp's
  24-hour window cannot be written to, so the reply is not retried but kept as a dead letter.

  Scenario: The language model is down
    Given the language model answers every request with a server error
    When the client 79001234567 writes "Хочу записаться на стрижку машинкой"
    And the administrator answers the client 79001234567
    And 60 seconds pass
    Then the client 79001234567 gets 1 reply
    And the client 79001234567 gets an apology "Извините"
    And the stats show 1 dead letter

  @whatsapp
  Scenario: WhatsApp's throughput limit is waited out and the reply is delivered once
    When WhatsApp refuses the next message with error 130429
    And the client 79001234567 writes "Сколько стоит мужская стрижка?"
    And the administrator answers the client 79001234567
    And 60 seconds pass
    Then the client 79001234567 gets 1 reply
    And WhatsApp refused 1 message with error 130429
    And the stats show 0 dead letters

  @whatsapp
  Scenario: A client outside the 24-hour window is not written to again and again
    When the client 79001234567 has not written for more than 24 hours as far as WhatsApp knows
    And the client 79001234567 writes "Сколько стоит мужская стрижка?"
    And 120 seconds pass
    Then the client 79001234567 gets 0 replies
    And WhatsApp refused 1 message with error 131047
    And the stats show 1 dead letter

  Scenario: Redis unavailable → the API answers 503 and nothing it had accepted is lost
    Given Redis can be switched off from the test
    When the client 79001234567 writes "Сколько стоит мужская стрижка?"
    And Redis becomes unreachable
    Then a webhook from the client 79001234567 is answered 503 with a Retry-After
    When Redis is reachable again
    And the administrator answers the client 79001234567
    And 60 seconds pass
    Then the client 79001234567 gets 1 reply
    And the administrator reads 1 turn

  # On a real Redis this scenario runs on the wall clock (Redis measures a job's idleness on its own clock):
  # the numbers keep it under a minute. The batch timeout is 9 s; the turn starts at 9 s and is killed at 11 s.
  @worker
  Scenario: A worker dying mid-turn → one reply after the reclaim
    Given the administrator takes 5 seconds to think
    And a job whose worker went silent is taken over after 12 seconds
    When the client 79001234567 writes "Сколько стоит мужская стрижка?"
    And 11 seconds pass
    Then the administrator reads 1 turn
    When the worker dies mid-turn
    And another worker starts
    And 8 seconds pass
    Then the client 79001234567 gets 0 replies
    When the administrator answers the client 79001234567
    And 20 seconds pass
    Then the client 79001234567 gets 1 reply
    And the administrator reads 2 turns
    And the stats show 0 dead letters
