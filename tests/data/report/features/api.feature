@api
Feature: The webhook takes only genuine, well-formed WhatsApp messages
  WhatsApp signs every webhook with the app secret. The webhook refuses what is not signed or not
  well-formed, saying what is wrong, and takes a message WhatsApp delivers twice only once.

  @security
  Scenario: A webhook without a signature is refused
    When a message from 79001234567 "Хочу записаться" arrives without a signature
    Then the webhook answers 401 with the error "bad_signature"
    And the stats show 0 messages accepted

  @security
  Scenario: A webhook signed with a wrong secret is refused
    When a message from 79001234567 "Хочу записаться" arrives signed with the secret "not-the-app-secret"
    Then the webhook answers 403 with the error "bad_signature"
    And the stats show 0 messages accepted

  @security
  Scenario Outline: A malformed webhook is refused with the problem named
    When the signed body <body> arrives at the webhook
    Then the webhook answers <status> with the error "<error>" naming "<problem>"

    Examples:
      | body                                    | status | error           | problem        |
      | {"entry": [                             | 400    | malformed_json  | not valid JSON |
      | [1, 2]                                  | 422    | invalid_payload | object         |
      | {"object": "whatsapp_business_account"} | 422    | invalid_payload | entry          |

  Scenario: A webhook WhatsApp delivers again is one turn and one reply
    When the client 79001234567 writes "Хочу записаться на стрижку машинкой" as message "wamid.HBgLNzkwMDEyMzQ1Njc"
    And 5 seconds pass
    And WhatsApp delivers message "wamid.HBgLNzkwMDEyMzQ1Njc" again
    And the administrator answers the client 79001234567
    And 60 seconds pass
    And WhatsApp delivers message "wamid.HBgLNzkwMDEyMzQ1Njc" again
    And 30 seconds pass
    Then the stats show 1 message accepted and 2 duplicates
    And the administrator reads 1 turn
    And the client 79001234567 gets 1 reply

  @security
  Scenario: A flood from one sender is refused while an allowlisted test number passes
    Given the number 79990009999 is exempt from rate limits
    When the client 79001234567 floods the webhook with 25 messages at once
    Then the webhook takes the first 20 and answers 429 to the other 5
    When the client 79990009999 floods the webhook with 25 messages at once
    Then the webhook takes all 25
